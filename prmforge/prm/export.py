"""Export a standard-head PRM in the layout vLLM and transformers serve with no custom code.

Why: a PRM saved as backbone + ``prm_head.safetensors`` loads only through this
project's pyfunc. ``Qwen2ForProcessRewardModel`` (the architecture of Qwen's official
PRMs) is in vLLM's model registry: Qwen2 weights under ``model.*`` and a ``score`` head
``Linear(h, h) -> ReLU -> Linear(h, 2)`` with biases, read at the step token with STEP
pooling and a softmax. A PRM trained with ``head_kind: standard`` on a Qwen2 base has
exactly that computation, so exporting is renaming tensors and rewriting config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from prmforge.prm.model import ProcessRewardModel

QWEN2_PRM_ARCH = "Qwen2ForProcessRewardModel"
EXPORT_INFO = "prmforge_export.json"


class ExportError(ValueError):
    """The PRM cannot be written in the requested layout (wrong head or backbone)."""


def is_standard(model: ProcessRewardModel) -> bool:
    """True when the head is the Qwen2 PRM head (two classes, ReLU, hidden = backbone width, no surprisal)."""
    cfg = model.config
    return (cfg.head == "two_class" and not cfg.surprisal and cfg.head_act == "relu"
            and cfg.head_hidden == int(model.backbone.config.hidden_size))


def export_qwen2_prm(model: ProcessRewardModel, tokenizer, folder: str | Path) -> Path:
    """Write ``model`` as a ``Qwen2ForProcessRewardModel`` folder (config, safetensors, tokenizer).

    The folder also holds ``prmforge_export.json`` with the step token and its id,
    which servers need as the STEP pooler's ``step_tag_id``.
    """
    if model.backbone.config.model_type != "qwen2":
        raise ExportError(f"the Qwen2 PRM layout needs a Qwen2 backbone, not {model.backbone.config.model_type!r}")
    if not is_standard(model):
        raise ExportError("only a PRM trained with head_kind: standard has the Qwen2 PRM head")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.backbone.state_dict().items():
        tensors[f"model.{name}"] = value.detach().cpu().contiguous()
    for name, value in model.head.state_dict().items():  # "0.weight" / "2.weight": same indices as score.*
        tensors[f"score.{name}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.backbone.config.to_dict()
    config.update(architectures=[QWEN2_PRM_ARCH], num_labels=2, id2label={"0": "LABEL_0", "1": "LABEL_1"},
                  label2id={"LABEL_0": 0, "LABEL_1": 1}, torch_dtype="float32")
    config.pop("dtype", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)
    info = {"layout": "qwen2-prm", "step_token": model.config.step_token,
            "step_token_id": model.config.step_token_id, "max_length": model.config.max_length,
            "prompt_format": model.config.prompt_format, "base_model": model.config.base_model}
    (folder / EXPORT_INFO).write_text(json.dumps(info, indent=2))
    return folder


def save_prm(model: ProcessRewardModel, tokenizer, folder: str | Path) -> Path:
    """``model.save`` plus, for a standard head on a Qwen2 base, ``qwen2_prm/``.

    ``qwen2_prm/`` is the same model in the ``Qwen2ForProcessRewardModel`` layout vLLM
    serves with no custom code, so a registered version carries it; the weights are
    stored twice for that.
    """
    from prmforge.prm.model import EXPORT_DIR

    folder = model.save(folder, tokenizer)
    if is_standard(model) and model.backbone.config.model_type == "qwen2":
        export_qwen2_prm(model, tokenizer, folder / EXPORT_DIR)
    return folder

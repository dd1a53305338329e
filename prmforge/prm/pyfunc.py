"""The PRM as an MLflow pyfunc model: input ``problem`` + list of ``steps``, output one score per step.

Logged as *models from code* (``pyfunc_entry.py`` is the model file) rather than a
cloudpickled instance, so loading the registered model never unpickles anything;
the weights are the safetensors PRM folder logged as the ``prm`` artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Schema

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the prmforge package, shipped as code

INPUT_EXAMPLE = pd.DataFrame({
    "problem": ["Tom has 3 apples and buys 4 more. How many apples does he have?"],
    "steps": [["Tom starts with 3 apples.", "3 + 4 = 7", "The answer is 7."]],
})


def signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "problem"), ColSpec(Array("string"), "steps")]),
        outputs=Schema([ColSpec(Array("double"), "step_scores")]),
    )


class PRMPyfunc(mlflow.pyfunc.PythonModel):
    """Scores each step with P(step is correct); NaN for steps beyond the context length."""

    def load_context(self, context: Any) -> None:
        import torch

        from prmforge.prm.model import ProcessRewardModel

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.model, self.tokenizer = ProcessRewardModel.load(context.artifacts["prm"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from prmforge.prm.model import score_steps

        items = [(str(p), [str(s) for s in steps]) for p, steps in
                 zip(model_input["problem"], model_input["steps"], strict=True)]
        scores = score_steps(self.model, self.tokenizer, items)
        return pd.DataFrame({"step_scores": scores})


def log_pyfunc(prm_dir: str | Path, name: str = "prm") -> Any:
    """Log the PRM folder as a pyfunc model in the active run; returns the ModelInfo."""
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(ENTRY),
        artifacts={"prm": str(prm_dir)},
        code_paths=[str(PACKAGE_DIR)],
        signature=signature(),
        input_example=INPUT_EXAMPLE,
        pip_requirements=["torch", "transformers", "safetensors", "tokenizers", "pandas", "pydantic", "pyarrow",
                          "fsspec"],
    )

"""The one place a policy prompt is built: the prompt text, then the model's chat template.

Every caller that prompts the policy (policy training, calibration, the world
benchmark, rollouts on any engine, Monte-Carlo completions through the
rollouts' stored prompt, Best-of-N) goes through :class:`PolicyPrompt`, so the
text a model is trained on is the text it is sampled with. The LLM judge wraps
its critique prompt with the same :func:`apply_chat`, its tokenizer chosen by
the same :func:`chat_tokenizer`. The embedded policy
is trained in its tokenizer's chat template when it has one (the ``qwen2``
policy's ChatML, Qwen's), so for it the template is applied exactly then;
another model gets it only when asked (``chat_template: true``), because a
served model's tokenizer may not be loadable here and a base model may have no
template.
"""

from __future__ import annotations

from typing import Any

INSTRUCT_TEMPLATE = (
    "{problem}\n\nSolve the problem step by step. Separate the steps with a blank line and end with "
    '"The answer is X."'
)


def render_prompt(problem: str, template: str, bootstrap_policy: bool) -> str:
    """The prompt text for one problem before any chat template.

    ``template``: ``world`` (the embedded policy's ``Problem: ...\\nSolution:\\n``),
    ``auto`` (``world`` for the embedded policy, :data:`INSTRUCT_TEMPLATE` otherwise)
    or a format string with ``{problem}``.
    """
    if template == "world" or (template == "auto" and bootstrap_policy):
        from prmforge.world import prompt_for

        return prompt_for(problem)
    if template == "auto":
        template = INSTRUCT_TEMPLATE
    if "{problem}" not in template:
        raise ValueError("prompt_template must contain {problem} (or be 'auto' / 'world')")
    return template.replace("{problem}", problem)


def apply_chat(tokenizer: Any, text: str) -> str:
    """``text`` as the user turn of the tokenizer's chat template, the assistant turn opened."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


class PolicyPrompt:
    """``problem -> prompt text``: :func:`render_prompt`, then the chat template if a tokenizer is given.

    Picklable (a Ray executor ships it to every actor with the shard function).
    """

    def __init__(self, template: str = "world", bootstrap_policy: bool = True, chat_tokenizer: Any = None) -> None:
        if chat_tokenizer is not None and not getattr(chat_tokenizer, "chat_template", None):
            raise ValueError("chat template requested but the tokenizer has none")
        self.template = template
        self.bootstrap_policy = bootstrap_policy
        self.chat_tokenizer = chat_tokenizer

    @property
    def chat(self) -> bool:
        """Whether the chat template is applied."""
        return self.chat_tokenizer is not None

    def __call__(self, problem: str) -> str:
        text = render_prompt(problem, self.template, self.bootstrap_policy)
        return apply_chat(self.chat_tokenizer, text) if self.chat_tokenizer is not None else text


def load_tokenizer(model_ref: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model folder, storage URI or hub id (no download)."""
    from transformers import AutoTokenizer

    from prmforge.model_files import local_model

    path, local_only = local_model(model_ref)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **local_only)


def chat_tokenizer(model_ref: str, chat: bool | None = None, trust_remote_code: bool = False) -> Any:
    """The tokenizer whose chat template wraps prompts for ``model_ref``, or None for the plain prompt.

    ``chat`` None: the template when the model's tokenizer has one; True: required (an
    error when the tokenizer has none); False: never, and nothing is loaded. Shared by the
    policy's prompt (:func:`policy_prompt`) and the LLM judge's, so both decide alike.
    """
    if chat is False:
        return None
    tok = load_tokenizer(model_ref, trust_remote_code)
    if getattr(tok, "chat_template", None):
        return tok
    if chat:
        raise ValueError(f"chat template requested but the tokenizer of {model_ref} has none")
    return None


def policy_prompt(model_ref: str, template: str = "auto", bootstrap_policy: bool = True,
                  chat: bool | None = None, trust_remote_code: bool = False) -> PolicyPrompt:
    """The prompt builder for the policy at ``model_ref``.

    ``chat`` None means: for the embedded (bootstrap) policy, its tokenizer's
    chat template if it has one (it was trained in it; the llama policy has none and was
    trained on the plain prompt), none for any other model; True/False force it (True
    needs a loadable tokenizer with a template).
    """
    if chat is None and not bootstrap_policy:
        chat = False
    return PolicyPrompt(template, bootstrap_policy, chat_tokenizer(model_ref, chat, trust_remote_code))

"""Prompt building: from an env observation to chat-template token ids.

Each turn's prompt is rebuilt from the template and the current observation
(plus, for multi-turn envs, a bounded history), so no chat-template
re-rendering of earlier turns can drop or change tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from onelayer.errors import UserError

DEFAULT_TEMPLATES = {
    "math": "{observation}\nPut the final answer in \\boxed{{}}.",
    "code": "{observation}",
    "agentic": "{observation}",
}


@dataclass
class PromptBuilder:
    """Renders ``template`` (with ``{observation}``) as the user turn of the tokenizer's chat template.

    Args:
        tokenizer: a HF tokenizer; its chat template is used when it has one.
        template: user-message template; ``{observation}`` is replaced by the env's observation.
        system_prompt: optional system message (None keeps the chat template's default).
    """

    tokenizer: object
    template: str = "{observation}"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if "{observation}" not in self.template:
            raise UserError(f"prompt template {self.template!r} must contain '{{observation}}'")

    @classmethod
    def for_domain(cls, tokenizer, domain: str, template: str | None = None, system_prompt: str | None = None) -> PromptBuilder:
        """The default builder of a domain (math, code, agentic), optionally with a user template."""
        return cls(tokenizer, template or DEFAULT_TEMPLATES.get(domain, "{observation}"), system_prompt)

    def text(self, observation: str) -> str:
        """The user message for ``observation``."""
        return self.template.replace("{observation}", observation).replace("{{}}", "{}")

    def messages(self, observation: str) -> list[dict]:
        """Chat messages for ``observation``."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": self.text(observation)}]

    def render(self, observation: str) -> str:
        """The full prompt string (chat template applied when the tokenizer has one)."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(self.messages(observation), add_generation_prompt=True, tokenize=False)
        return self.text(observation) + "\n"

    def encode(self, observation: str) -> list[int]:
        """Prompt token ids for ``observation``."""
        return self.tokenizer(self.render(observation), add_special_tokens=False)["input_ids"]

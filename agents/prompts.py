"""Prompt building: from an env observation (plus bounded history) to chat-template token ids.

Each turn's prompt is rebuilt from the template, the task, the last ``H``
observation/action pairs and the current observation (verl-agent's
step-independent prompts), so context stays bounded over long episodes and no
chat-template re-rendering of earlier turns can drop or change tokens.

Template placeholders: ``{observation}`` (required), ``{task}``, ``{history}``,
``{admissible_actions}``, ``{step}``.

Action formats (agentic envs): ``"text"`` (default, as verl-agent) asks for the
action's text inside ``<action>...</action>``; ``"choice"`` numbers the admissible
actions one per line (in an order shuffled per episode and turn, see
``shown_actions``), ends the prompt with the assistant's ``<action>`` (a response
prefix) and reads the number the model writes next. ``"choice"`` is the
easy setting for small models: a 135M model that echoes the observation in the
text format picks a number after the prefix. ``"score"`` lists the admissible
actions, ends the prompt with ``<action>`` too, and generates nothing: the policy
is a softmax over the model's likelihood of each action's text after the prefix
(``agents.scoring``), so every action is valid and the choice depends on what the
actions say, not on where they stand in a list.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from onelayer.agents.actions import ParsedAction, parse_action, parse_choice
from onelayer.agents.scoring import ACTION_END
from onelayer.errors import UserError

AGENTIC_TEMPLATE = (
    "{task}{history}Current observation (step {step}): {observation}\n"
    "Admissible actions: {admissible_actions}\n"
    "Choose one admissible action and reply with it inside <action></action>, for example <action>look</action>."
)
AGENTIC_CHOICE_TEMPLATE = (
    "{task}{history}Current observation (step {step}): {observation}\n"
    "Admissible actions:\n{admissible_actions}\n"
    "Reply with the number of one admissible action inside <action></action>, for example <action>1</action>."
)
AGENTIC_SCORE_TEMPLATE = (
    "{task}{history}Current observation (step {step}): {observation}\n"
    "Admissible actions: {admissible_actions}\n"
    "Reply with the admissible action that best advances the task inside <action></action>."
)
AGENTIC_THINK_TEMPLATE = AGENTIC_TEMPLATE.replace(
    "Choose one admissible action and reply",
    "First reason step by step inside <think></think>. Then choose one admissible action and reply")

AGENT_TEMPLATES = {"text": AGENTIC_TEMPLATE, "choice": AGENTIC_CHOICE_TEMPLATE, "score": AGENTIC_SCORE_TEMPLATE}
"""The default user template of an acting env, by action format (an env's own template replaces it)."""

ACTION_FORMATS = ("text", "choice", "score")
CHOICE_PREFIX = "<action>"


@dataclass
class PromptBuilder:
    """Renders ``template`` as the user turn of the tokenizer's chat template.

    Args:
        tokenizer: a HF tokenizer; its chat template is used when it has one.
        template: user-message template (see the module docstring for placeholders).
        system_prompt: optional system message (None keeps the chat template's default).
        history_length: how many recent (observation, action) pairs ``{history}`` shows.
        action_format: ``"text"``, ``"choice"`` or ``"score"`` (see the module docstring).
    """

    tokenizer: object
    template: str = "{observation}"
    system_prompt: str | None = None
    history_length: int = 2
    action_format: str = "text"

    def __post_init__(self) -> None:
        if self.action_format not in ACTION_FORMATS:
            raise UserError(f"unknown action_format {self.action_format!r}: use one of {', '.join(ACTION_FORMATS)}")
        if "{observation}" not in self.template:
            raise UserError(f"prompt template {self.template!r} must contain '{{observation}}'")
        if self.history_length < 0:
            raise UserError(f"history_length must be >= 0, got {self.history_length}")

    @classmethod
    def for_domain(cls, tokenizer, domain, template: str | None = None, system_prompt: str | None = None,
                   history_length: int = 2, action_format: str = "text") -> PromptBuilder:
        """The default builder of a domain (a DomainSpec, a domain name or an env id), optionally with a user template.

        The env's own ``prompt_template`` (its DomainSpec) comes first, then the default of
        its kind: ``{observation}`` for text tasks, the agent template of ``action_format``
        for acting ones. ``action_format`` applies to acting envs only; the others always
        answer in text (a run trained on ALFWorld in the choice format scores math suites
        as math).
        """
        from onelayer.envs.domain import DomainSpec, domain_spec

        spec = domain if isinstance(domain, DomainSpec) else domain_spec(domain)
        if action_format not in ACTION_FORMATS:
            raise UserError(f"unknown action_format {action_format!r}: use one of {', '.join(ACTION_FORMATS)}")
        if not spec.actions:
            action_format = "text"
        default = spec.prompt_template or (AGENT_TEMPLATES[action_format] if spec.actions else "{observation}")
        if spec.actions and spec.prompt_template and action_format != "text":
            default = AGENT_TEMPLATES[action_format]  # the numbered / scored list needs its own wording
        return cls(tokenizer, template or default, system_prompt, history_length, action_format)

    @property
    def response_prefix(self) -> str:
        """Text the prompt ends with on the assistant's side (the model continues it)."""
        return CHOICE_PREFIX if self.action_format in ("choice", "score") else ""

    def parse(self, response: str, admissible: Sequence[str] | None = None) -> ParsedAction:
        """The env action a response (the text after the prompt) stands for, in this builder's action format."""
        if self.action_format == "choice":
            return parse_choice(response, list(admissible) if admissible else None)
        if self.action_format == "score":  # the text after the <action> prefix, read up to </action>
            return parse_action(response.split(ACTION_END, 1)[0], list(admissible) if admissible else None,
                                require_tags=False)
        return parse_action(response, list(admissible) if admissible else None)

    def shown_actions(self, admissible: Sequence[str] | None, key: str) -> list[str] | None:
        """The admissible actions in the order a prompt lists them.

        ``choice`` shuffles them with a seed drawn from ``key`` (the collector passes
        the rollout seed, episode and turn): numbered in the env's alphabetical order,
        a small model's preference for low numbers picks ``examine`` or ``go to`` in
        nearly every state and almost never ``take`` or ``put`` (measured on the
        default model: P(1) ~ 0.55, P(last) ~ 0.015). Shuffled, that preference
        explores uniformly. Other formats keep the env's order.
        """
        if not admissible:
            return None if admissible is None else []
        actions = list(admissible)
        if self.action_format == "choice":
            random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")).shuffle(actions)
        return actions

    def candidate_text(self, action: str) -> str:
        """What the ``score`` format scores for ``action``: its text and the closing tag (so "go to desk 1" is not
        a prefix of "go to desk 10")."""
        return action + ACTION_END

    def _admissible_text(self, admissible: Sequence[str] | None) -> str:
        if not admissible:
            return "(any text)"
        if self.action_format == "choice":
            return "\n".join(f"{i}. {a}" for i, a in enumerate(admissible, 1))
        return ", ".join(admissible)

    def text(self, observation: str, history: Sequence[tuple[str, str]] = (), admissible: Sequence[str] | None = None,
             task: str | None = None, step: int | None = None) -> str:
        """The user message for one turn."""
        recent = list(history)[-self.history_length:] if self.history_length else []
        hist = ""
        if recent:
            first = len(history) - len(recent) + 1
            hist = "Recent steps:\n" + "".join(
                f"[step {first + i}] observation: {o}\naction: {a}\n" for i, (o, a) in enumerate(recent))
        values = {
            "{task}": f"Your task is to: {task}\n" if task else "",
            "{history}": hist,
            "{admissible_actions}": self._admissible_text(admissible),
            "{step}": str(step if step is not None else len(history) + 1),
        }
        out = self.template.replace("{{}}", "{}")
        for k, v in values.items():
            out = out.replace(k, v)
        # the observation goes in last so text inside it is never treated as a placeholder
        return out.replace("{observation}", observation)

    def messages(self, observation: str, **kw) -> list[dict]:
        """Chat messages for one turn."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": self.text(observation, **kw)}]

    def render(self, observation: str, **kw) -> str:
        """The full prompt string (chat template applied when the tokenizer has one), ending with the response prefix."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(self.messages(observation, **kw), add_generation_prompt=True, tokenize=False)
        else:
            text = self.text(observation, **kw) + "\n"
        return text + self.response_prefix

    def encode(self, observation: str, **kw) -> list[int]:
        """Prompt token ids for one turn."""
        return self.tokenizer(self.render(observation, **kw), add_special_tokens=False)["input_ids"]

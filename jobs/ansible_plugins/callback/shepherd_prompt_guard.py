"""Ansible callback that stops a playbook before it waits for keyboard input.

Shepherd runs playbooks with no terminal, so a ``pause`` prompt or a
``vars_prompt`` would either wait forever or, with standard input closed, be
skipped with the question unanswered. This callback ends the playbook before
either happens and writes what it found to the file named by
``SHEPHERD_PROMPT_FILE``, which the job reads to explain the failure.
"""

import json
import os
import sys

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: shepherd_prompt_guard
    type: aggregate
    short_description: Stop a playbook before it waits for keyboard input
    description:
      - Ends the playbook with return code 3 at a pause prompt or a vars_prompt.
"""

PAUSE_ACTIONS = {"pause", "ansible.builtin.pause", "ansible.legacy.pause"}
PROMPT_EXIT_CODE = 3


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "shepherd_prompt_guard"
    CALLBACK_NEEDS_ENABLED = True

    def _stop(self, kind, prompt, where):
        detail = {"kind": kind, "prompt": prompt, "where": where}
        path = os.environ.get("SHEPHERD_PROMPT_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(detail, handle)
        self._display.error(
            f"{where} waits for keyboard input at the prompt {prompt!r}; "
            "Shepherd runs playbooks without a terminal, so the playbook was stopped. "
            "Pass the answer as an extra var instead."
        )
        # SystemExit is not caught by Ansible's callback dispatcher, so this
        # ends ansible-playbook before the prompt is shown.
        sys.exit(PROMPT_EXIT_CODE)

    def v2_playbook_on_start(self, playbook):
        # Ansible prompts for vars_prompt variables before any play-level callback,
        # and skips those answered by extra vars.
        from ansible.utils.vars import load_extra_vars

        answered = load_extra_vars(playbook._loader)
        for play in playbook.get_plays():
            for entry in play.vars_prompt or []:
                name = entry.get("name")
                if name in answered:
                    continue
                prompt = entry.get("prompt") or name
                self._stop(
                    "vars_prompt",
                    prompt,
                    f"play {play.get_name()!r} (vars_prompt {name!r})",
                )

    def v2_playbook_on_task_start(self, task, is_conditional):
        action = getattr(task, "resolved_action", None) or task.action
        if action not in PAUSE_ACTIONS:
            return
        args = task.args or {}
        if args.get("seconds") or args.get("minutes"):
            return
        prompt = args.get("prompt") or "Press enter to continue"
        self._stop("pause", str(prompt), f"task {task.get_name()!r}")

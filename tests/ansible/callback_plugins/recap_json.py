# The tests' stdout callback: one JSON document with every task's per-host result and the
# recap, the shape of ansible.posix's `json` callback, so the tests need ansible-core only
# (not the 500 MB `ansible` bundle that ships ansible.posix).
"""Print one JSON document at the end of a run: the plays, their tasks' results, the recap."""

from __future__ import annotations

import json
import typing as t

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: recap_json
type: stdout
short_description: radmin's tests read task results and the recap from one JSON document
description:
  - Collects each task's result per host and prints them with the play recap as JSON when
    the run ends.
"""


class CallbackModule(CallbackBase):
    """Collect results as they come; print the document once, when the stats are in."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "recap_json"

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.plays: list[dict[str, t.Any]] = []

    def v2_playbook_on_play_start(self, play: t.Any) -> None:
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def _task_start(self, task: t.Any) -> None:
        if not self.plays:  # ad-hoc `ansible` has an implicit play
            self.plays.append({"play": {"name": ""}, "tasks": []})
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name()}, "hosts": {}})

    v2_playbook_on_task_start = v2_playbook_on_handler_task_start = _task_start

    def _record(self, result: t.Any, **status: bool) -> None:
        if not self.plays or not self.plays[-1]["tasks"]:
            self._task_start(result._task)
        outcome = dict(result._result) | status
        outcome.setdefault("action", result._task.action)
        self.plays[-1]["tasks"][-1]["hosts"][result._host.get_name()] = outcome

    def v2_runner_on_ok(self, result: t.Any) -> None:
        self._record(result)

    def v2_runner_on_failed(self, result: t.Any, ignore_errors: bool = False) -> None:
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result: t.Any) -> None:
        self._record(result, unreachable=True)

    def v2_runner_on_skipped(self, result: t.Any) -> None:
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats: t.Any) -> None:
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._display.display(
            json.dumps({"plays": self.plays, "stats": summary}, default=str, sort_keys=True)
        )

"""The resume store: ``results.jsonl`` and the ``run.json`` settings of an output folder.

Each finished (item, arm) pair is appended to ``results.jsonl`` as one line and flushed to disk
before the next pair starts, so an interrupted run loses at most the pair in flight. A run in a
folder that already has results skips the pairs found there. ``run.json`` records the settings
that change outputs (data file digest, model, max_new_tokens, seed and so on); resuming with a
different value raises instead of mixing results of two settings. Arms may be added on resume.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from slotq.evaluation.errors import EvaluationError

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"


class ResultStore:
    """Rows of one output folder, keyed by (item_id, arm)."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]):
        """Open or create the folder and check ``settings`` against those of earlier runs.

        Raises:
            EvaluationError: the folder cannot be created, or an earlier run used other settings.
        """
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise EvaluationError(f"output folder {self.folder} cannot be created: {error.strerror}") from error

        self._check_settings(settings)
        self._rows: dict[tuple[str, str], dict] = {}
        self._load_rows()

    @property
    def results_path(self) -> Path:
        return self.folder / RESULTS_FILE

    def has(self, item_id: str, arm: str) -> bool:
        return (item_id, arm) in self._rows

    def rows(self) -> list[dict]:
        """Return every stored row, in the order the pairs finished."""
        return list(self._rows.values())

    def append(self, row: dict) -> None:
        """Write one finished pair and flush it to disk.

        Raises:
            EvaluationError: the pair is already stored.
        """
        key = (row["item_id"], row["arm"])
        if key in self._rows:
            raise EvaluationError(f"result for item {key[0]!r} and arm {key[1]!r} is already stored")
        line = json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
        with open(self.results_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._rows[key] = row

    def _check_settings(self, settings: dict[str, Any]) -> None:
        path = self.folder / RUN_FILE
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            for key, value in settings.items():
                if key in stored and stored[key] != value:
                    raise EvaluationError(
                        f"{self.folder} contains results of a run with {key}={stored[key]!r}, but this run has "
                        f"{key}={value!r}; use another --out folder or the same settings"
                    )
        path.write_text(json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def _load_rows(self) -> None:
        if not self.results_path.exists():
            return
        lines = self.results_path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for number, line in enumerate(lines, start=1):
            row = self._parse_row(line, number, last=number == len(lines))
            if row is None:
                continue
            self._rows[(row["item_id"], row["arm"])] = row
            kept.append(line if line.endswith("\n") else line + "\n")

        if len(kept) != len(lines):
            # A kill during a write leaves a partial last line; rewrite the file without it.
            self.results_path.write_text("".join(kept), encoding="utf-8")
        logger.info("resuming from %s: %d finished pairs", self.results_path, len(self._rows))

    def _parse_row(self, line: str, number: int, last: bool) -> dict | None:
        if not line.strip():
            return None
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if last:
                logger.warning("%s:%d: dropping a partial last line left by an interrupted run", self.results_path, number)
                return None
            raise EvaluationError(f"{self.results_path}:{number}: not valid JSON ({error.msg}); fix or delete the line") from error
        if not isinstance(row, dict) or "item_id" not in row or "arm" not in row:
            raise EvaluationError(f"{self.results_path}:{number}: not a result row (needs item_id and arm)")
        return row

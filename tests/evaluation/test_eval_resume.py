import json

import pytest

from slotq.evaluation import EvalOptions, EvaluationError, load_dataset, parse_arms, run_evaluation
from slotq.evaluation.engine_runner import EngineRunner
from slotq.evaluation.store import RESULTS_FILE, ResultStore

ARMS = parse_arms("0,2", "0.1")
VALIDATION = [[{"role": "user", "content": "Name three colours."}]]


class Interrupted(Exception):
    pass


class InterruptingRunner:
    """Wraps a real runner and raises once it has returned ``limit`` generations."""

    def __init__(self, runner, limit):
        self.runner = runner
        self.limit = limit
        self.returned = 0
        self.mode = runner.mode
        self.device = runner.device

    def run(self, arm, items):
        if self.returned >= self.limit:
            raise Interrupted(f"interrupted after {self.returned} results")
        generations = self.runner.run(arm, items)
        self.returned += len(generations)
        return generations


def options(out):
    return EvalOptions(out=out, arms=ARMS, max_new_tokens=4, seed=0, model="tiny", progress=False)


def comparable(summary):
    """The parts of a summary that do not depend on timing."""
    return [
        {key: arm[key] for key in ("arm", "prompts", "errors", "metrics", "delta_norm", "overfit", "output_tokens")}
        | {"vs_baseline": arm.get("vs_baseline")}
        for arm in summary["arms"]
    ]


def read_rows(out):
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text(encoding="utf-8").splitlines()]


def test_interrupted_run_resumes(tmp_path, gsm8k_file, tiny_model, tokenizer):
    dataset = load_dataset(gsm8k_file)
    runner = EngineRunner(tiny_model, tokenizer, max_new_tokens=4, seed=0, validation_prompts=VALIDATION)
    out = tmp_path / "interrupted"

    with pytest.raises(Interrupted):
        run_evaluation(dataset, InterruptingRunner(runner, limit=3), options(out))
    assert len(read_rows(out)) == 3

    calls = InterruptingRunner(runner, limit=100)
    resumed = run_evaluation(dataset, calls, options(out))
    rows = read_rows(out)
    keys = [(row["item_id"], row["arm"]) for row in rows]
    assert calls.returned == 3
    assert len(rows) == 6
    assert len(set(keys)) == 6

    uninterrupted = run_evaluation(dataset, runner, options(tmp_path / "whole"))
    assert comparable(resumed) == comparable(uninterrupted)


def test_partial_last_line_dropped(tmp_path, gsm8k_file, tiny_model, tokenizer):
    dataset = load_dataset(gsm8k_file, limit=1)
    runner = EngineRunner(tiny_model, tokenizer, max_new_tokens=4, seed=0, validation_prompts=VALIDATION)
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        run_evaluation(dataset, InterruptingRunner(runner, limit=1), options(out))
    with open(out / RESULTS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"item_id": "line-1", "arm": "steps=2,lr=0.1", "te')

    run_evaluation(dataset, runner, options(out))
    rows = read_rows(out)
    assert [row["arm"] for row in rows] == ["steps=0", "steps=2,lr=0.1"]
    assert rows[1]["text"] is not None


def test_resume_with_other_settings_rejected(tmp_path, gsm8k_file, tiny_model, tokenizer):
    dataset = load_dataset(gsm8k_file, limit=1)
    run_evaluation(dataset, EngineRunner(tiny_model, tokenizer, max_new_tokens=4, validation_prompts=VALIDATION), options(tmp_path))
    changed = EvalOptions(out=tmp_path, arms=ARMS, max_new_tokens=5, model="tiny", progress=False)
    with pytest.raises(EvaluationError, match="max_new_tokens=4.*max_new_tokens=5"):
        run_evaluation(dataset, EngineRunner(tiny_model, tokenizer, max_new_tokens=5, validation_prompts=VALIDATION), changed)


def test_store_rejects_duplicate_pair(tmp_path):
    store = ResultStore(tmp_path, {"seed": 0})
    store.append({"item_id": "1", "arm": "steps=0"})
    with pytest.raises(EvaluationError, match="already stored"):
        store.append({"item_id": "1", "arm": "steps=0"})
    assert len(ResultStore(tmp_path, {"seed": 0}).rows()) == 1


def test_store_rejects_corrupt_middle_line(tmp_path):
    (tmp_path / RESULTS_FILE).write_text('{"item_id": "1", "arm": "steps=0"}\nnot json\n{"item_id": "2", "arm": "steps=0"}\n')
    with pytest.raises(EvaluationError, match=f"{RESULTS_FILE}:2: not valid JSON"):
        ResultStore(tmp_path, {"seed": 0})

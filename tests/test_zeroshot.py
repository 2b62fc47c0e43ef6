"""Zero-shot accuracy through lm-evaluation-harness on the model in memory, with a task over local data
(no network): the harness's accuracy equals one computed by hand from the model's log-likelihoods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm_surgeon.errors import ConfigError, DataError
from llm_surgeon.evaluation.zeroshot import check_tasks, headline, parse_tasks, zero_shot
from tests.conftest import tiny_llama, tiny_tokenizer

DOCS = [
    {"question": "the model is", "choices": ["small", "pruned", "dense"], "answer": 1},
    {"question": "zeros in the", "choices": ["weights", "sky"], "answer": 0},
    {"question": "a curvature of", "choices": ["the loss", "a road", "time"], "answer": 0},
    {"question": "sparse and", "choices": ["fast", "slow"], "answer": 1},
    {"question": "prune the", "choices": ["layer", "tree", "rose"], "answer": 2},
]

TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "tiny_choice.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (folder / "tiny_choice.yaml").write_text(TASK.format(data=data))
    return folder


def hand_accuracy(model, tokenizer) -> float:
    """Accuracy of picking the choice with the largest summed log-probability after "question ", as the
    harness defines multiple choice."""
    correct = 0
    for doc in DOCS:
        context = tokenizer(doc["question"], add_special_tokens=False).input_ids
        scores = []
        for choice in doc["choices"]:
            continuation = tokenizer(" " + choice, add_special_tokens=False).input_ids
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            targets = ids[0, len(context):]
            scores.append(float(logprobs[len(context) - 1:].gather(1, targets[:, None]).sum()))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return correct / len(DOCS)


@pytest.fixture
def tasks_dir(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    return write_task(tmp_path / "tasks")


def harness_tokenizer():
    """The tiny character tokenizer with an end-of-text token (the harness's prefix for empty contexts)."""
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "\n"
    return tokenizer


def test_the_harness_accuracy_is_the_hand_computed_one(tasks_dir):
    tokenizer = harness_tokenizer()
    for seed in range(3):  # a few random models
        model = tiny_llama(seed).eval()
        metrics = zero_shot(model, tokenizer, ["tiny_choice"], tasks_dir)["tiny_choice"]
        assert metrics["samples"] == len(DOCS)
        assert metrics["acc,none"] == pytest.approx(hand_accuracy(model, tokenizer))
        assert headline(metrics) == ("acc", metrics["acc,none"])
    limited = zero_shot(tiny_llama(0).eval(), tokenizer, ["tiny_choice"], tasks_dir, limit=2)["tiny_choice"]
    assert limited["samples"] == 2


def test_unknown_tasks_and_folders_are_refused(tasks_dir, tmp_path):
    with pytest.raises(DataError, match="lm-eval does not know the task\\(s\\) no_such_task"):
        check_tasks(["no_such_task"], tasks_dir)
    with pytest.raises(DataError, match="task folder does not exist"):
        check_tasks(["tiny_choice"], tmp_path / "missing")
    with pytest.raises(DataError, match="tokenizer has neither a BOS nor an EOS token"):
        zero_shot(tiny_llama().eval(), tiny_tokenizer(), ["tiny_choice"], tasks_dir)
    with pytest.raises(ConfigError, match="named twice"):
        parse_tasks("a,a")
    assert parse_tasks("") == [] and parse_tasks("a, b") == ["a", "b"]


def write_harness_model(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny Llama folder with the harness's tokenizer, and a fake WikiText-2 data folder."""
    from tests.conftest import write_fake_wikitext

    model = tmp_path / "model"
    tiny_llama().save_pretrained(model)
    harness_tokenizer().save_pretrained(model)
    return model, write_fake_wikitext(tmp_path / "data")


def test_prune_and_eval_put_the_accuracy_in_the_report(tasks_dir, tmp_path):
    from tests.conftest import run_cli

    model, data = write_harness_model(tmp_path)
    out = tmp_path / "out"
    run_cli("prune", str(model), "--out", str(out), "--method", "magnitude", "--sparsity", "0.5",
            "--data-dir", str(data), "--eval-tasks", "tiny_choice", "--tasks-dir", str(tasks_dir), "--no-progress")
    report = json.loads((out / "report.json").read_text())
    accuracy = report["zero_shot"]["tasks"]["tiny_choice"]
    assert 0 <= accuracy["acc,none"] <= 1 and accuracy["samples"] == len(DOCS) and report["seconds"]["zero_shot"] > 0

    evaluated = json.loads(run_cli("eval", str(out), "--data-dir", str(data), "--seqlen", "32", "--max-windows",
                                   "1", "--tasks", "tiny_choice", "--tasks-dir", str(tasks_dir), "--json",
                                   "--no-progress").stdout)
    assert evaluated["zero_shot"]["tasks"]["tiny_choice"]["acc,none"] == pytest.approx(accuracy["acc,none"])


def test_a_missing_harness_or_task_is_refused_before_loading(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("eval", str(tmp_path / "no-model"), "--tasks", "no_such_task", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no_such_task" in proc.stderr or "pip install 'llm-surgeon[eval]'" in proc.stderr


def test_bench_tables_the_zero_shot_accuracy(tasks_dir, tmp_path):
    import subprocess
    import sys

    model, data = write_harness_model(tmp_path)
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "llm_surgeon.cli", "bench", str(model), "--out", str(out), "--methods", "magnitude",
           "--sparsities", "0.5", "--eval-seqlen", "32", "--eval-max-windows", "1", "--eval-tasks", "tiny_choice",
           "--tasks-dir", str(tasks_dir), "--data-dir", str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert set(runs) == {"dense", "magnitude|unstructured|0.5"}
    for record in runs.values():
        assert 0 <= record["zero_shot"]["tiny_choice"]["acc,none"] <= 1
    table = (out / "results.md").read_text()
    assert "### Zero-shot accuracy (lm-evaluation-harness)" in table and "| tiny_choice |" in table

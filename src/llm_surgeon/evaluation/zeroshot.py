"""Zero-shot accuracy with lm-evaluation-harness on the model in memory (the optional ``eval`` extra).

Pruning papers report lm-eval tasks (PIQA, HellaSwag, ARC, ...) beside perplexity. The harness is driven
through its Python API on the already-loaded model, so a pruned model is scored without being saved and
reloaded. ``tasks_dir`` adds task definitions from YAML files (lm-eval's ``include_path``), e.g. a task
over local JSON-lines data for machines without network access.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from llm_surgeon.errors import ConfigError, DataError

INSTALL_HINT = "zero-shot tasks need lm-evaluation-harness: pip install 'llm-surgeon[eval]'"


def parse_tasks(tasks: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Comma-separated (or listed) task names, each once, in order; empty means none."""
    if tasks is None:
        return []
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if len(set(names)) != len(names):
        raise ConfigError(f"a task is named twice in {tasks!r}")
    return names


def _task_manager(tasks_dir: str | Path | None):
    return _cached_task_manager(None if tasks_dir is None else str(tasks_dir))


@lru_cache(maxsize=4)
def _cached_task_manager(tasks_dir: str | None):
    """lm-eval indexes thousands of task files when a manager is made: once per folder per process."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc
    if tasks_dir is not None and not Path(tasks_dir).is_dir():
        raise DataError(f"task folder does not exist: {tasks_dir}")
    return TaskManager(include_path=tasks_dir)


def check_tasks(tasks: list[str], tasks_dir: str | Path | None = None) -> None:
    """Refuse, before any model is loaded, a missing harness or a task it does not know."""
    if not tasks:
        return
    known = set(_task_manager(tasks_dir).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        where = f" (nor in {tasks_dir})" if tasks_dir else " (add --tasks-dir for your own task YAML files)"
        raise DataError(f"lm-eval does not know the task(s) {', '.join(unknown)}{where}")


def zero_shot(model, tokenizer, tasks: list[str], tasks_dir: str | Path | None = None, limit: int | None = None,
              batch_size: int = 1, num_fewshot: int | None = None) -> dict[str, dict[str, float]]:
    """Each task's metrics (``{"acc,none": 0.61, "acc_stderr,none": 0.02, ...}``) for ``model`` as it is.

    ``limit`` scores only the first documents of each task (quick checks; the report says so)."""
    check_tasks(tasks, tasks_dir)
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has neither a BOS nor an EOS token, which lm-eval puts before empty contexts")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = simple_evaluate(model=lm, tasks=tasks, task_manager=_task_manager(tasks_dir), limit=limit,
                              num_fewshot=num_fewshot, log_samples=False)
    finally:
        model.train(was_training)
    results = {}
    for task in tasks:
        metrics = out["results"].get(task, {})
        results[task] = {name: float(value) for name, value in metrics.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
        results[task]["samples"] = int(out.get("n-samples", {}).get(task, {}).get("effective", 0))
    return results


def headline(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The number a table shows for a task: normalised accuracy where the task has it, else accuracy."""
    for name in ("acc_norm,none", "acc,none", "exact_match,none"):
        if name in metrics:
            return name.split(",")[0], metrics[name]
    return None

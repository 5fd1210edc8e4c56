"""Kill `save_checkpoint` at every filesystem step of a save that replaces a checkpoint and prunes another.

    python tests/training/kill_during_save.py OUT_DIR

For each kill point k, a forked child saves `step-00000001` and `step-00000002` (checkpoints_total_limit 2), then
saves step 2 again with `epoch` 9 and checkpoints_total_limit 1 (the replace of an existing step folder, then the
pruning of step 1) and SIGKILLs itself at point k of that last save: just before its k-th rename or delete, or
in the middle of its k-th delete (one file of the folder gone). Points are numbered until one is past the save's
last step. Each point's checkpoint folder is `OUT_DIR/point-<k>/`; the last line printed is JSON,
`[{"point": k, "where": "before rename" | "inside rmtree" | ..., "killed": bool}, ...]`. The test
(`test_checkpointing.py`) then resumes from each folder. Children are forked from a process that has computed
nothing, so no thread pool is copied mid-use.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import sys

import torch
from accelerate import Accelerator
from modeling_missrec.pipelines.training.checkpointing import TrainingProgress, save_checkpoint


def arm(point: int) -> list[str]:
    """Make the point-th rename or delete from now on SIGKILL this process (before it, or in the middle of a
    delete, every other point); returns the log of steps seen, which stays short of `point` if the save ends."""
    seen: list[str] = []
    rename, replace, rmtree = pathlib.Path.rename, os.replace, shutil.rmtree

    def step(what: str, inside: bool = False) -> bool:
        seen.append(what)
        if len(seen) - 1 == point:
            if not inside:
                os.kill(os.getpid(), signal.SIGKILL)
            return True
        return False

    def killing_rmtree(path, *args, **kwargs):
        if step(f"before rmtree {pathlib.Path(path).name}") or not pathlib.Path(path).exists():
            return rmtree(path, *args, **kwargs)
        if step(f"inside rmtree {pathlib.Path(path).name}", inside=True):
            os.remove(next(p for p in pathlib.Path(path).rglob("*") if p.is_file()))
            os.kill(os.getpid(), signal.SIGKILL)
        return rmtree(path, *args, **kwargs)

    def killing_rename(self, target):
        step(f"before rename {self.name}")
        return rename(self, target)

    def killing_replace(source, target):
        step(f"before replace {pathlib.Path(target).name}")
        return replace(source, target)

    pathlib.Path.rename, os.replace, shutil.rmtree = killing_rename, killing_replace, killing_rmtree
    return seen


def main(out_dir: pathlib.Path) -> None:
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    results, point = [], 0
    while True:
        root = out_dir / f"point-{point}"
        pid = os.fork()
        if pid == 0:
            for step, limit in ((1, 2), (2, 2)):
                save_checkpoint(accelerator, root, TrainingProgress("m", {}, epoch=step, global_step=step), None, limit)
            seen = arm(point)
            save_checkpoint(accelerator, root, TrainingProgress("m", {}, epoch=9, global_step=2), None, 1)
            (root / "steps.json").write_text(json.dumps(seen))
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if not killed and os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"point {point}: the save failed (status {status})")
        results.append({"point": point, "killed": killed})
        if not killed:
            steps = json.loads((root / "steps.json").read_text())
            (root / "steps.json").unlink()
            for result in results:
                result["where"] = steps[result["point"]] if result["point"] < len(steps) else "after the save"
            print(json.dumps(results))
            return
        point += 1


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))

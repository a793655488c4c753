"""How many steps the demo's tiny teacher and student need before a linear probe sees motion.

One run: train a `vit_test` teacher for ``--teacher-steps`` (0 = random init, frozen as is), then a
student of it for ``--student-steps``, and probe (the demo's protocol: linear heads on mean-pooled
frozen tokens, chosen on held-out probe-train clips) the teacher, a random-init encoder and the
student at ``--probe-at`` steps. Prints one JSON line and writes it to ``--out``.

Why not `salt demo`: the real pipeline is bound by its one decoding worker (~10 steps/s on 2 cores),
and recipe questions need many seeds. This loop calls the real modules' ``training_loss``,
optimiser, schedule and mask collator on clips made in memory by ``motion_frames`` (the same
generator the shards hold, without the H.264 round trip), on one thread, so one CPU core runs one
configuration. The tables in experiments/demo_recipe/README.md came from 16 of these at once:

    python experiments/demo_recipe/run.py --name base_s0 --seed 0 --teacher-steps 2000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from salt.data.synthetic import clip_rng, motion_frames
from salt.data.transforms import train_transform
from salt.demo import MASKS, PROBE, PROBE_OVERRIDES
from salt.module_base import SaltModule
from salt.optim import prepare_optimizer_step
from salt.probes.config import load_config
from salt.probes.features import FeatureSet, encode_clips
from salt.probes.protocol import probe_features, random_like, score
from salt.student import StudentModule
from salt.teacher import TeacherModule

CLASSES, FRAMES, SIZE, SPAN = 4, 32, 64, 15  # 8 frames at step 2 span 15 source frames


def clips(split: str, n: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 [n, FRAMES, SIZE, SIZE, 3] clips of one split and their labels (as the shards hold)."""
    x = [
        motion_frames(i % CLASSES, CLASSES, FRAMES, SIZE, clip_rng(seed, split, i))
        for i in range(n)
    ]
    return np.stack(x), torch.arange(n) % CLASSES


def eval_clips(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The centred 8-frame window, uint8 [n, 1, 1, C, 8, H, W] (one segment, one view)."""
    x, y = clips(split, n, seed)
    s = (FRAMES - SPAN) // 2
    video = torch.from_numpy(x[:, s : s + SPAN : 2]).permute(0, 4, 1, 2, 3)  # [n, C, 8, H, W]
    return video[:, None, None], y


class Run:
    """Data, probe and training loop of one configuration."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.rng = random.Random(args.seed)
        self.train_x, _ = clips("train", args.num_train, args.seed)
        self.probe_train = eval_clips("probe_train", 256, args.seed)
        self.val = eval_clips("val", 128, args.seed)
        self.cfg = load_config(None, {**PROBE, **PROBE_OVERRIDES})

    def batch(self, bs: int) -> torch.Tensor:
        """uint8 [bs, C, 8, H, W]: random clip, random window, the train transform."""
        out = []
        for _ in range(bs):
            i, s = self.rng.randrange(len(self.train_x)), self.rng.randint(0, FRAMES - SPAN)
            frames = self.train_x[i, s : s + SPAN : 2]
            out.append(train_transform(frames, SIZE, self.rng, (self.a.scale, 1.0), flip_prob=0.5))
        return torch.stack(out)

    def probe(self, encoder: torch.nn.Module) -> float:
        """Validation top-1 of the head chosen on held-out probe-train clips."""
        was_training = encoder.training
        encoder.eval()

        def feats(v: torch.Tensor) -> torch.Tensor:  # [n, 1, N, D]
            return torch.cat([encode_clips(encoder, v[i : i + 32]) for i in range(0, len(v), 32)])

        train = FeatureSet(feats(self.probe_train[0]), self.probe_train[1])
        val = FeatureSet(feats(self.val[0]), self.val[1])
        result = score(probe_features(train, val.feats, self.cfg, CLASSES), train, val, CLASSES)
        encoder.train(was_training)
        return round(result.top1, 3)

    def train(self, module: SaltModule, steps: int, bs: int, probe_at: set[int]) -> dict:
        """`steps` optimiser steps; {step: (mean loss of the last 50, top-1)} at `probe_at`."""
        opt = module.configure_optimizers(total_steps=steps)
        optimizer, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
        collate = module.build_mask_collator(seed=self.a.seed)
        module.train()
        losses, out = [], {}
        for step in range(1, steps + 1):
            loss, _ = module.training_loss({"video": self.batch(bs), "masks": collate(bs)})
            loss.backward()
            prepare_optimizer_step(optimizer, 1.0, None)
            optimizer.step()
            optimizer.zero_grad()
            sched.step()
            losses.append(loss.item())
            if step in probe_at:
                out[step] = (round(float(np.mean(losses[-50:])), 4), self.probe(module.encoder))
                print(self.a.name, step, out[step], flush=True)
        out["final_loss"] = float(np.mean(losses[-50:])) if losses else None
        return out


def save_teacher(module: TeacherModule, path: Path, step: int) -> None:
    """The encoder as an exported .safetensors with the metadata `load_encoder` reads."""
    enc = module.encoder
    meta = {"stage": "teacher", "encoder_config": dict(enc.config), "encoder_prefix": "encoder.",
            "rope_convention": "interleaved-v1", "mean": list(module.mean), "std": list(module.std),
            "step": step, "train_loss": None, "teacher": None, "mlflow_run_id": None}  # fmt: skip
    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    save_file(state, str(path), metadata={"salt": json.dumps(meta)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-steps", type=int, default=2000)
    p.add_argument("--student-steps", type=int, default=2000)
    p.add_argument("--probe-at", default="300,600,1000,1600,2000")
    p.add_argument("--teacher-lr", type=float, default=3e-3)
    p.add_argument("--student-lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--predictor-depth", type=int, default=2)
    p.add_argument("--scale", type=float, default=0.3, help="smallest random-resized-crop area")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--num-train", type=int, default=512)
    p.add_argument("--out", default="demo_recipe_out")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run = Run(a)
    common = dict(encoder="vit_test", img_size=SIZE, num_frames=8, masks=MASKS, final_lr=1e-5,
                  warmup_steps=a.warmup, weight_decay=0.04, final_weight_decay=0.1)  # fmt: skip
    teacher = TeacherModule(decoder_dim=48, decoder_depth=2, decoder_heads=4, decoder_mlp_hidden=96,
                            lr=a.teacher_lr, start_lr=a.teacher_lr / 10, **common)  # fmt: skip
    res: dict = {"name": a.name, "args": vars(a)}
    res["teacher_loss"] = run.train(teacher, a.teacher_steps, a.batch_size, set())["final_loss"]
    res["teacher"] = run.probe(teacher.encoder)
    res["random"] = run.probe(random_like(teacher.encoder, seed=a.seed + 100))
    teacher_path = out / f"{a.name}_teacher.safetensors"
    save_teacher(teacher, teacher_path, a.teacher_steps)
    student = StudentModule(teacher=str(teacher_path), predictor_dim=48,
                            predictor_depth=a.predictor_depth, predictor_heads=4,
                            predictor_mlp_hidden=96, lr=a.student_lr, start_lr=a.student_lr / 10,
                            **common)  # fmt: skip
    at = {int(s) for s in a.probe_at.split(",")}
    res["student"] = run.train(student, a.student_steps, a.batch_size, at)
    res["seconds"] = round(time.time() - t0)
    print("RESULT", json.dumps(res), flush=True)
    (out / f"{a.name}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main()

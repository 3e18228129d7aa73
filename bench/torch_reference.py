#!/usr/bin/env python3
"""The paper's PEDConv ResNet-18 in PyTorch, as its code computes it, beside pedconv.

Two commands:

  check-golden  builds the paper's operator and network from the equations of
                tests/fixtures/golden/README.md and compares them, on the CPU, with the golden
                files the paper's own code produced (every layer case in float64: outputs,
                info-max loss and every gradient; the ResNet-18 checkpoint's logits).
  bench         times one training step and one inference forward of the paper's PEDConv
                ResNet-18 and of torchvision's static ResNet-18 exactly as `pedconv bench`
                does (the same batch, image size, one warm-up run, then the median of --reps
                runs), in float32 or bfloat16 autocast; with --pedconv, writes pedconv's rows
                and these side by side with the ratios.

The operator (per-sample kernels, the batch folded into the groups of one convolution, Gaussian
noise on the attention logits in training and the information-maximisation decoder) is the
reference's computation, not pedconv's: it is the baseline pedconv is measured against.
"""

import argparse
import json
import statistics
import struct
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# The paper's operator and network


class Attention(nn.Module):
    """The attention branch and the training-only decoder of one PEDConv layer."""

    def __init__(self, cin, cout, k, groups, reduction=16):
        super().__init__()
        hidden = max(1, cin // reduction)
        self.fc_share = nn.Linear(cin, hidden)
        self.fc_inp = nn.Linear(hidden, cin // groups)
        self.fc_oup = nn.Linear(hidden, cout)
        self.fc_k = nn.Linear(hidden, k * k)
        self.decoder = nn.Sequential(
            nn.Linear(cin // groups + cout + k * k, hidden), nn.ReLU(), nn.Linear(hidden, cin)
        )


class PEDConv2d(nn.Module):
    """The reference operator: W_b = W ⊙ a_out ⊗ a_in ⊗ a_k per sample, then one grouped
    convolution with the batch as groups. In training, the layer's info-max loss is kept in
    `im_loss` for the network to sum."""

    def __init__(self, cin, cout, k, stride=1, padding=0, dilation=1, groups=1, noise_std=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.attn = Attention(cin, cout, k, groups)
        self.k, self.stride, self.padding = k, stride, padding
        self.dilation, self.groups, self.noise_std = dilation, groups, noise_std
        self.im_loss = None

    def forward(self, x, eps=None):
        b, cin, h, w = x.shape
        cout = self.weight.shape[0]
        attn = self.attn
        pooled = x.mean(dim=(2, 3))
        hidden = F.relu(attn.fc_share(pooled))
        z = [attn.fc_inp(hidden), attn.fc_oup(hidden), attn.fc_k(hidden)]
        if self.training:
            eps = eps or [torch.randn_like(mu) for mu in z]
            z = [mu + self.noise_std * e for mu, e in zip(z, eps)]
        a_in, a_out, a_k = (torch.sigmoid(v) for v in z)
        kernels = (
            self.weight.unsqueeze(0)
            * a_out.view(b, cout, 1, 1, 1)
            * a_in.view(b, 1, -1, 1, 1)
            * a_k.view(b, 1, 1, self.k, self.k)
        )
        y = F.conv2d(
            x.reshape(1, b * cin, h, w),
            kernels.reshape(b * cout, cin // self.groups, self.k, self.k),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=b * self.groups,
        )
        y = y.reshape(b, cout, y.shape[2], y.shape[3])
        if self.training:
            decoded = attn.decoder(torch.cat(z, dim=1))
            self.im_loss = F.mse_loss(decoded, pooled.detach())
        return y


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, dynamic):
        super().__init__()
        if dynamic:
            self.conv1 = PEDConv2d(cin, cout, 3, stride, 1)
            self.conv2 = PEDConv2d(cout, cout, 3, 1, 1)
        else:
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet18(nn.Module):
    """The reference's ResNet-18: PEDConv in the blocks' 3×3 convolutions (static stem,
    shortcuts and classifier), `width` times the channels; an adaptive average pool, equal to
    the reference's `AvgPool2d(7)` at 224×224."""

    def __init__(self, width=1.0, num_classes=1000, dynamic=True):
        super().__init__()
        widths = [int(c * width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for index, cout in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(cin, cout, stride, dynamic), BasicBlock(cout, cout, 1, dynamic)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def info_max_loss(self):
        """The sum of the PEDConv layers' info-max losses of the last training forward."""
        losses = [m.im_loss for m in self.modules() if isinstance(m, PEDConv2d)]
        return sum(losses) if losses else None


# --------------------------------------------------------------------------------------------
# check-golden


def read_safetensors(path):
    """The tensors of a safetensors file (its format: an 8-byte little-endian header length, a
    JSON header of dtype, shape and byte offsets, then the data), without the package."""
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    dtypes = {"F64": torch.float64, "F32": torch.float32, "I64": torch.int64}
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        raw = bytearray(data[8 + length + start : 8 + length + end])
        tensor = torch.frombuffer(raw, dtype=dtypes[entry["dtype"]]) if raw else torch.empty(0)
        tensors[name] = tensor.reshape(entry["shape"]).clone()
    return tensors


def relative_error(actual, expected):
    """max |actual − expected| / max |expected|."""
    scale = expected.abs().max().item() or 1.0
    return (actual - expected).abs().max().item() / scale


def check_layers(golden, tolerance):
    """Every case of pedconv_layer_cases: evaluation and training outputs, the info-max loss,
    the loss and every gradient, in float64. Returns the failures."""
    cases = json.loads((golden / "pedconv_layer_cases.json").read_text())["cases"]
    tensors = read_safetensors(golden / "pedconv_layer_cases.safetensors")
    failures = []
    for case in cases:
        name = case["name"]
        layer = PEDConv2d(
            case["cin"], case["cout"], case["k"], case["stride"], case["padding"],
            case["dilation"], case["groups"],
        ).double()
        prefix = f"{name}.param."
        params = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        layer.load_state_dict(params, strict=True)
        get = lambda key: tensors[f"{name}.{key}"]  # noqa: E731
        results = {}
        with torch.no_grad():
            results["y_eval"] = layer.eval()(get("x"))
        layer.train()
        x = get("x").clone().requires_grad_(True)
        y = layer(x, eps=[get("eps_in"), get("eps_out"), get("eps_k")])
        loss = (y * get("r")).sum() + 0.001 * layer.im_loss
        loss.backward()
        results["y_train"] = y.detach()
        results["im_loss"] = layer.im_loss.detach().reshape(1)
        results["loss"] = loss.detach().reshape(1)
        results["grad.x"] = x.grad
        for param_name, param in layer.named_parameters():
            results[f"grad.{param_name}"] = param.grad
        for key, actual in results.items():
            error = relative_error(actual, get(key))
            status = "ok" if error <= tolerance else "FAILED"
            print(f"  {name} {key}: relative error {error:.2e} {status}")
            if error > tolerance:
                failures.append(f"{name} {key}")
    return failures


def check_network(golden, tolerance):
    """The golden ResNet-18 checkpoint (width 0.25, 10 classes) gives the reference's logits."""
    checkpoint = torch.load(
        golden / "resnet18_w0.25_c10_ref.pth.tar", map_location="cpu", weights_only=False
    )
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    model = ResNet18(width=0.25, num_classes=10)
    model.load_state_dict(state, strict=True)
    io = read_safetensors(golden / "resnet18_w0.25_c10_ref_io.safetensors")
    with torch.no_grad():
        logits = model.eval()(io["x"])
    error = relative_error(logits, io["logits"])
    status = "ok" if error <= tolerance else "FAILED"
    print(f"  resnet18_w0.25_c10 logits: relative error {error:.2e} {status}")
    return [] if error <= tolerance else ["resnet18 logits"]


def check_golden(args):
    golden = Path(args.golden)
    # float64 against float64 from the same equations: summation order only, 1e-10 of the
    # largest value is thousands of ulps and still far below any wrong term.
    failures = check_layers(golden, 1e-10)
    # float32 through 18 layers: a few ulps per layer; 1e-4 as pedconv's own import test.
    failures += check_network(golden, 1e-4)
    if failures:
        print(f"check-golden: {len(failures)} mismatches: {', '.join(failures)}")
        return 1
    print("check-golden: the operator and the network equal the paper's golden files")
    return 0


# --------------------------------------------------------------------------------------------
# bench


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device, reps, work):
    """As pedconv's `measure`: one warm-up run (its peak device memory above the memory in use
    before it), then the median time of `reps` runs, each synchronised."""
    cuda = device.type == "cuda"
    if cuda:
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    work()
    synchronize(device)
    peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if cuda else None
    times = []
    for _ in range(max(reps, 1)):
        start = time.perf_counter()
        work()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"millis": statistics.median(times), "device_peak_mib": peak_mib}


def bench_model(name, model, batch, size, args, device, channels_last):
    """One training step (forward, label-smoothed cross-entropy plus 0.001 × the info-max
    losses, backward, SGD with momentum 0.875 and weight decay on all but the batch norms) and
    one inference forward, with the batch copied from the host each time as pedconv's step
    does."""
    classes = 1000
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.arange(batch) % classes
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    norms = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    norm_ids = {id(p) for p in norms}
    others = [p for p in model.parameters() if id(p) not in norm_ids]
    optimizer = torch.optim.SGD(
        [{"params": others, "weight_decay": 3.0517578125e-05}, {"params": norms, "weight_decay": 0}],
        lr=0.512 * batch / 512,
        momentum=0.875,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def upload():
        return images.to(device, memory_format=memory_format, non_blocking=False)

    def train_step():
        model.train()
        x, y = upload(), labels.to(device)
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
            info_max = model.info_max_loss() if hasattr(model, "info_max_loss") else None
            if info_max is not None:
                loss = loss + 0.001 * info_max.float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def inference():
        model.eval()
        with torch.inference_mode(), autocast:
            model(upload())

    print(f"torch bench: {name}, batch {batch}, {size}×{size} …", file=sys.stderr, flush=True)
    train = measure(device, args.reps, train_step)
    infer = measure(device, args.reps, inference)
    per_second = lambda m: batch / (m["millis"] / 1e3)  # noqa: E731
    return {
        "model": name,
        "batch": batch,
        "image_size": size,
        "precision": args.precision,
        "channels_last": channels_last,
        "train_step": train,
        "train_images_per_second": per_second(train),
        "inference": infer,
        "inference_images_per_second": per_second(infer),
    }


def static_resnet18(width):
    """torchvision's ResNet-18 at width 1; the same network as ResNet18(dynamic=False) else."""
    if width == 1.0:
        import torchvision

        return torchvision.models.resnet18(num_classes=1000)
    return ResNet18(width=width, dynamic=False)


def parse_settings(text):
    settings = []
    for item in text.split(","):
        batch, side = item.lower().split("x")
        settings.append((int(batch), int(side)))
    return settings


def pedconv_rows(directories):
    """`pedconv bench`'s network rows from its output directories: bench.json, or the rows of
    bench.jsonl where the run stopped before its report."""
    rows = []
    for directory in map(Path, directories):
        report, log = directory / "bench.json", directory / "bench.jsonl"
        if report.exists():
            rows += json.loads(report.read_text())["networks"]
        elif log.exists():
            entries = [json.loads(line) for line in log.read_text().splitlines() if line]
            rows += [entry for entry in entries if entry.get("kind") == "network"]
        else:
            print(f"torch bench: no pedconv rows in {directory}", file=sys.stderr)
    return rows


def side_by_side(torch_rows, pedconv, device_name):
    """A markdown table: each (batch, size, precision) with pedconv's PEDConv and static rows
    and PyTorch's, and pedconv ÷ the paper's code, pedconv ÷ PyTorch's static network."""
    def peak(measure):
        value = measure.get("device_peak_mib")
        return "–" if value is None else f"{value:.0f}"

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "–"

    out = [
        f"Device: {device_name}. Train = one training step, inference = one forward; "
        "img/s from the median of the timed runs; peak = device memory above what was in use "
        "before the warm-up run. pedconv's inference folds the batch norms; PyTorch's runs "
        "them in eval mode.",
        "",
        "| batch | image | precision | implementation | model | train img/s | train peak MiB "
        "| inference img/s | pedconv PEDConv ÷ this, train | ÷ this, inference |",
        "| ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = sorted({(r["batch"], r["image_size"], r["precision"]) for r in torch_rows})
    for batch, size, precision in keys:
        same = lambda r: (r["batch"], r["image_size"], r.get("precision")) == (  # noqa: E731
            batch, size, precision)
        ours = [r for r in pedconv if same(r)]
        ped = next((r for r in ours if r["model"] == "pedconv"), None)
        listed = [("pedconv", r) for r in ours] + [
            ("PyTorch", r) for r in torch_rows if same(r)
        ]
        for implementation, row in listed:
            train_ratio = ratio(ped and ped["train_images_per_second"], row["train_images_per_second"])
            infer_ratio = ratio(
                ped and ped["inference_images_per_second"], row["inference_images_per_second"]
            )
            out.append(
                f"| {batch} | {size}² | {precision} | {implementation} | {row['model']} "
                f"| {row['train_images_per_second']:.3g} | {peak(row['train_step'])} "
                f"| {row['inference_images_per_second']:.3g} | {train_ratio} | {infer_ratio} |"
            )
    return "\n".join(out) + "\n"


def bench(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = "CPU"
    print(
        f"torch bench: PyTorch {torch.__version__} on {device_name}, {args.precision}",
        file=sys.stderr,
    )
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    log = (output / "torch.jsonl").open("w")
    rows = []
    for batch, size in parse_settings(args.settings):
        torch.manual_seed(0)
        candidates = [
            ("paper's PEDConv", lambda: ResNet18(width=args.width), False),
            ("static", lambda: static_resnet18(args.width), False),
            ("static, channels_last", lambda: static_resnet18(args.width), True),
        ]
        for name, build, channels_last in candidates:
            row = bench_model(name, build(), batch, size, args, device, channels_last)
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    (output / "torch.json").write_text(json.dumps({"device": device_name, "rows": rows}, indent=2))
    table = side_by_side(rows, pedconv_rows(args.pedconv), device_name)
    (output / "side-by-side.md").write_text(table)
    print(table)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-golden", help="compare with the paper's golden files")
    check.add_argument("--golden", default="tests/fixtures/golden")
    timing = commands.add_parser("bench", help="time the paper's code and torchvision's static")
    timing.add_argument("--settings", default="128x224", help="BATCHxSIDE, comma-separated")
    timing.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    timing.add_argument("--width", type=float, default=1.0)
    timing.add_argument("--reps", type=int, default=3)
    timing.add_argument("--device", default=None, help="default: cuda where available")
    timing.add_argument("--output", required=True, help="directory of torch.json and the table")
    timing.add_argument(
        "--pedconv", nargs="*", default=[], help="`pedconv bench` output directories to set beside"
    )
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return check_golden(args) if args.command == "check-golden" else bench(args)


if __name__ == "__main__":
    sys.exit(main())

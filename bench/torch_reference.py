#!/usr/bin/env python3
"""The paper's PEDConv ResNet-18 in PyTorch, as its code computes it, beside pedconv.

Three commands:

  check-golden  builds the paper's operator and network from the equations of
                tests/fixtures/golden/README.md and compares them, on the CPU, with the golden
                files the paper's own code produced (every layer case in float64: outputs,
                info-max loss and every gradient; the ResNet-18 checkpoint's logits).
  bench         times one training step and one inference forward of the paper's PEDConv
                ResNet-18 and of torchvision's static ResNet-18 as `pedconv bench` does (the
                same batch and image size, 8-bit images uploaded and normalised on the device in
                each step; the first run timed alone, one warm-up run, then the median and the
                peak memory of --reps runs), in float32 or bfloat16 autocast, and profiles one
                training step of each. After every model it rewrites torch.json and, with
                pedconv's rows where --pedconv has them, side-by-side.md with the ratios.
  table         renders side-by-side.md again from a bench's torch.json and pedconv's
                directories as they are now.

The operator (per-sample kernels, the batch folded into the groups of one convolution, Gaussian
noise on the attention logits in training and the information-maximisation decoder) is the
reference's computation, not pedconv's: it is the baseline pedconv is measured against.
"""

import argparse
import json
import os
import re
import statistics
import struct
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

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

# ImageNet's per-channel mean and deviation, as pedconv normalises its 8-bit images.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, work):
    """The time of one run of `work`, synchronised before and after, in milliseconds."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def measure(device, reps, work):
    """As pedconv's `measure`: the first run timed on its own (cuDNN's algorithm search and the
    first allocations fall in it), an untimed warm-up run, then `reps` timed runs: their median
    time and the peak of the device memory allocated during them above what was allocated
    before them."""
    first = timed(device, work)
    timed(device, work)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    times = [timed(device, work) for _ in range(max(reps, 1))]
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if cuda else None
    return {"millis": statistics.median(times), "first_millis": first, "device_peak_mib": peak}


def write_atomically(path, text):
    """Writes `text` to `path` through a temporary file, so that a kill leaves the old file or
    the new one, never a part."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_profile(path, title, device, top, work):
    """Runs `work` once under PyTorch's profiler and writes to `path`, in markdown, its `top`
    most expensive kernels by self CUDA time (on the CPU: operators by self CPU time)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as profiler:
        wall = timed(device, work)
    kind, clock, entry = (
        (DeviceType.CUDA, "CUDA", "kernel") if cuda else (DeviceType.CPU, "CPU", "operator")
    )

    def self_us(event):
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    # The profiler's own sums leave out user annotations (record_function's ranges, such as
    # the optimizer's step), which span the kernels inside them.
    events = [
        event for event in profiler.key_averages()
        if event.device_type == kind and not event.is_user_annotation
    ]
    events.sort(key=self_us, reverse=True)
    total = sum(map(self_us, events)) or 1
    lines = [
        f"{title}: one training step under torch.profiler, {wall:.1f} ms wall, "
        f"{total / 1e3:.1f} ms of self {clock} time in all (% of that).",
        "",
        f"| {entry} | total ms | count | % |",
        "| --- | ---: | ---: | ---: |",
    ]
    for event in events[:top]:
        name = event.key if len(event.key) <= 80 else event.key[:79] + "…"
        name = name.replace("|", "\\|")
        lines.append(
            f"| `{name}` | {self_us(event) / 1e3:.2f} | {event.count} "
            f"| {100 * self_us(event) / total:.1f} |"
        )
    write_atomically(path, "\n".join(lines) + "\n")


def bench_model(name, model, batch, size, args, device, channels_last):
    """One training step (forward, label-smoothed cross-entropy plus 0.001 × the info-max
    losses, backward, SGD with momentum 0.875 and weight decay on all but the batch norms) and
    one inference forward, each uploading its batch as pedconv's step does: 8-bit images from
    pageable host memory, made float32 and normalised on the device. Returns the row and the
    training step, to profile."""
    classes = 1000
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(batch) % classes
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    norms = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    norm_ids = {id(p) for p in norms}
    others = [p for p in model.parameters() if id(p) not in norm_ids]
    optimizer = torch.optim.SGD(
        [
            {"params": others, "weight_decay": 3.0517578125e-05},
            {"params": norms, "weight_decay": 0},
        ],
        lr=0.512 * batch / 512,
        momentum=0.875,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def upload():
        x = images.to(device, non_blocking=False).contiguous(memory_format=memory_format)
        return x.float().div_(255).sub_(mean).div_(std)

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

    print(f"torch bench: {setting_name(name, batch, size, args)} …", file=sys.stderr, flush=True)
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
    }, train_step


def setting_name(name, batch, size, args):
    return f"{name}, batch {batch}, {size}×{size}, {args.precision}"


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


def read_jsonl(path):
    """The entries of a JSON-lines file, without a last line that a kill cut short; none where
    the file is missing."""
    entries = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass
    return entries


def torch_report(directory):
    """The device and rows of a `bench` output directory: torch.json, or torch.jsonl's rows."""
    try:
        report = json.loads((directory / "torch.json").read_text())
        return report["device"], report["rows"]
    except (OSError, ValueError):
        rows = read_jsonl(directory / "torch.jsonl")
        return (rows[0].get("device", "unknown") if rows else "unknown"), rows


def pedconv_rows(directories):
    """`pedconv bench`'s ResNet-18 rows from its output directories (bench.json, or the rows of
    bench.jsonl where the run stopped before its report), and the directories without any."""
    rows, empty = [], []
    for directory in map(Path, directories):
        try:
            found = json.loads((directory / "bench.json").read_text())["networks"]
        except (OSError, ValueError):
            found = [e for e in read_jsonl(directory / "bench.jsonl") if e.get("kind") == "network"]
        found = [row for row in found if row.get("network", "ResNet-18") == "ResNet-18"]
        rows += found
        if not found:
            empty.append(str(directory))
    return rows, empty


def side_by_side(device_name, torch_rows, pedconv, empty):
    """A markdown table: each (batch, size, precision) with pedconv's PEDConv and static rows
    and PyTorch's, their first runs and peaks, and pedconv's PEDConv ÷ each row; then a note
    for each setting without pedconv's PEDConv row and each directory without rows."""
    def number(value, spec):
        return "–" if value is None else format(value, spec)

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "–"

    out = [
        f"Device: {device_name}. Train = one training step, inference = one forward; each "
        "uploads its batch of 8-bit images from pageable host memory (pinned on neither side) "
        "and normalises it on the device. img/s from the median of the timed runs; first = the "
        "first run alone (algorithm search, compilation, first allocations); peak = the most "
        "device memory in use above what was in use before, read after the first run and an "
        "untimed warm-up. pedconv's inference folds the batch norms; PyTorch's runs them in "
        "eval mode. The ratios are pedconv's PEDConv img/s ÷ this row's.",
        "",
        "| batch | image | precision | implementation | model | train img/s | train first ms "
        "| train peak MiB | inference img/s | inference first ms | inference peak MiB "
        "| pedconv PEDConv ÷ this, train | ÷ this, inference |",
        "| ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []

    def setting(row):
        return row["batch"], row["image_size"], row.get("precision")

    for key in sorted({setting(r) for r in torch_rows + pedconv}):
        batch, size, precision = key
        ours = [r for r in pedconv if setting(r) == key]
        ped = next((r for r in ours if r["model"] == "pedconv"), None)
        if ped is None:
            notes.append(f"No pedconv PEDConv row for batch {batch}, {size}², {precision}: "
                         "no ratios there.")
        listed = [("pedconv", r) for r in ours]
        listed += [("PyTorch", r) for r in torch_rows if setting(r) == key]
        for implementation, row in listed:
            train, infer = row["train_step"], row["inference"]
            cells = [
                batch, f"{size}²", precision, implementation, row["model"],
                f"{row['train_images_per_second']:.0f}",
                number(train.get("first_millis"), ".1f"),
                number(train.get("device_peak_mib"), ".0f"),
                f"{row['inference_images_per_second']:.0f}",
                number(infer.get("first_millis"), ".1f"),
                number(infer.get("device_peak_mib"), ".0f"),
                ratio(ped and ped["train_images_per_second"], row["train_images_per_second"]),
                ratio(
                    ped and ped["inference_images_per_second"], row["inference_images_per_second"]
                ),
            ]
            out.append("| " + " | ".join(map(str, cells)) + " |")
    notes += [f"No pedconv rows in `{directory}` (yet)." for directory in empty]
    if notes:
        out += [""] + [f"- **Note:** {note}" for note in notes]
    return "\n".join(out) + "\n"


def write_table(directory, pedconv_directories):
    """Renders `directory/side-by-side.md` from its torch.json (or torch.jsonl) and the pedconv
    directories as they are now; returns the table."""
    device_name, torch_rows = torch_report(directory)
    table = side_by_side(device_name, torch_rows, *pedconv_rows(pedconv_directories))
    write_atomically(directory / "side-by-side.md", table)
    return table


def save(output, device_name, rows, pedconv_directories):
    """Rewrites torch.json and side-by-side.md with the rows so far; returns the table. pedconv's
    rows are another program's: where they cannot be read, measuring goes on without the table."""
    report = {"device": device_name, "rows": rows}
    write_atomically(output / "torch.json", json.dumps(report, indent=2))
    try:
        return write_table(output, pedconv_directories)
    except (KeyError, TypeError, ValueError) as error:
        print(f"torch bench: no table ({error!r})", file=sys.stderr)
        return ""


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("'", "")).strip("-")


def bench(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = "CPU"
    print(
        f"torch bench: PyTorch {torch.__version__} on {device_name}, {args.precision}",
        file=sys.stderr,
    )
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows, table = [], ""
    with (output / "torch.jsonl").open("w") as log:
        for index, (batch, size) in enumerate(parse_settings(args.settings)):
            torch.manual_seed(0)
            candidates = [
                ("paper's PEDConv", lambda: ResNet18(width=args.width), False),
                ("static", lambda: static_resnet18(args.width), False),
                ("static, channels_last", lambda: static_resnet18(args.width), True),
            ]
            for name, build, channels_last in candidates:
                row, step = bench_model(name, build(), batch, size, args, device, channels_last)
                rows.append({**row, "device": device_name})
                log.write(json.dumps(rows[-1]) + "\n")
                log.flush()
                table = save(output, device_name, rows, args.pedconv)
                if index == 0 and args.profile > 0:
                    path = output / f"profile-{slug(name)}.md"
                    title = setting_name(name, batch, size, args)
                    try:
                        write_profile(path, title, device, args.profile, step)
                    except RuntimeError as error:
                        # The row is saved already: a failed profile ends nothing.
                        print(f"torch bench: no profile ({error})", file=sys.stderr)
                del step  # the last holder of the model and its optimizer
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print(table)
    return 0


def render_table(args):
    directory = Path(args.torch)
    directory.mkdir(parents=True, exist_ok=True)
    print(write_table(directory, args.pedconv))
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
    timing.add_argument(
        "--profile", type=int, default=15, metavar="N",
        help="profile one training step of each model at the first setting and write its N "
        "most expensive kernels to profile-<model>.md (0: no profile)",
    )
    render = commands.add_parser("table", help="render side-by-side.md again from the results")
    render.add_argument("--torch", required=True, help="a `bench` output directory")
    render.add_argument(
        "--pedconv", nargs="+", required=True, help="`pedconv bench` output directories"
    )
    args = parser.parse_args()
    run = {"check-golden": check_golden, "bench": bench, "table": render_table}[args.command]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

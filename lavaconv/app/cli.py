"""``lavaconv`` command line: convert, eval, deploy, export, energy, profiles."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from lavaconv.app.deploy import GRAPHS, TARGETS, DeployConfig
from lavaconv.app.session import DEVICES, RunConfig
from lavaconv.conversion import ConvertOptions
from lavaconv.conversion.structure import CORRECTIONS, MAXPOOLS, NEURONS
from lavaconv.errors import LavaconvError, shown
from lavaconv.ir.network import ENCODINGS, MAX_BURST, READOUTS
from lavaconv.quantize.integer import WEIGHT_SCALES

DEFAULT_TIMESTEPS = "8,16,32,64,128,256"


def _timesteps(text: str) -> list[int]:
    try:
        steps = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if steps[0] < 1:
        raise argparse.ArgumentTypeError("timesteps must be >= 1")
    return steps


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W as integers, got {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"every dimension must be >= 1, got {text!r}")
    return shape


def _number(kind: type, lo: float | None = None, hi: float | None = None, *,
            above: bool = False) -> Callable[[str], int | float]:
    """An argparse type: a finite ``kind`` (int or float) in [lo, hi], or (lo, hi] with
    ``above``; a missing bound is unbounded."""
    form = str if kind is int else "{:g}".format
    span = f"{'(' if above else '['}{'-inf' if lo is None else form(lo)}, " \
           f"{'inf' if hi is None else form(hi)}]"
    name = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {shown(text)}") from None
        low_ok = lo is None or (value > lo if above else value >= lo)
        if not (math.isfinite(value) and low_ok and (hi is None or value <= hi)):
            raise argparse.ArgumentTypeError(f"expected {name} in {span}, got {shown(text)}")
        return value

    return parse


COUNT = _number(int, 1)
SEED = _number(int, 0, 2**32 - 1)


def _out_dir(text: str) -> str:
    """An ``--out`` that lavaconv may write (checked again when written)."""
    from lavaconv.app.outputs import check_out_dir

    try:
        check_out_dir(text)
    except LavaconvError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


def _weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", choices=WEIGHT_SCALES, default=DeployConfig.weights,
                   help="integer weight scale: one per layer (default) or one per output channel "
                   "(each channel's weights span the whole grid; one threshold per channel)")


def _zeta(text: str) -> float | str:
    if text == "auto":
        return text
    return _number(float, 0, above=True)(text)


def _model_args(p: argparse.ArgumentParser) -> None:
    """Arguments of a conversion run: defaults and choices from RunConfig and ConvertOptions."""
    opt, run = ConvertOptions(), RunConfig("", "")
    p.add_argument("model", help="model file: .pt2 (torch.export), TorchScript, .onnx (extra "
                   "'onnx'), state_dict (with --arch) or pickled nn.Module (with --trust-pickle)")
    p.add_argument("--data", required=True, help="digits | fashion-mnist[:DIR] | FILE.npz")
    p.add_argument("--arch", help="module:callable building the model for a state_dict")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a full nn.Module (runs code from the file)")
    p.add_argument("--norm", default=str(opt.norm),
                   help="activation scale: none | max | pQ, optionally :channel or :neuron "
                   f"(neuron-wise, SNM eq. 14) (default {opt.norm})")
    p.add_argument("--neuron", choices=tuple(NEURONS), default=opt.neuron,
                   help="rmp: reset by subtraction (default); if: reset to zero; snm: signed "
                   "neuron with memory (SNM eq. 7-11); sigma-delta: Lava's SigmaDelta units "
                   "sending graded changes (docs/sigma-delta.md)")
    p.add_argument("--sd-threshold", type=float, default=opt.sd_threshold, metavar="THETA",
                   help="sigma-delta: delta threshold in units of each layer's scale, the "
                   f"accuracy/traffic knob (default {opt.sd_threshold})")
    p.add_argument("--input", choices=ENCODINGS, default=opt.input)
    p.add_argument("--v-init", type=_number(float, 0, 1), default=opt.v_init,
                   help=f"initial membrane potential in thresholds (default {opt.v_init}: Bu et "
                   "al. 2022; 0 is the seed papers' choice)")
    p.add_argument("--readout", choices=READOUTS, default=opt.readout,
                   help="class = argmax of the output potential (default), of its spike count, "
                   "or of a spiking softmax (Rueckauer sec. 3.5)")
    p.add_argument("--no-shortcut-norm", action="store_true",
                   help="leave identity shortcuts unnormalised (S-ResNet Table 2 baseline)")
    p.add_argument("--balance", type=_number(float, 0, 4, above=True), metavar="ALPHA",
                   help="RMP threshold balancing from SNN statistics, threshold = ALPHA * max "
                   "input (RMP sec. 4.1)")
    p.add_argument("--zeta", type=_zeta, default=opt.zeta,
                   help="S-ResNet weight factor (eq. 14), or 'auto' to search it (default 1)")
    p.add_argument("--correction", choices=CORRECTIONS, default=opt.correction,
                   help="per-channel correction of the bias or of the initial potential from "
                   "SNN statistics (Li et al. 2021) (default none)")
    p.add_argument("--burst", type=_number(int, 1, MAX_BURST), default=opt.burst, metavar="K",
                   help="burst spikes: threshold lambda / K and up to K spikes a step, sent as "
                   "one graded message (Li & Zeng 2022; needs graded spikes, e.g. Loihi 2) "
                   "(default 1)")
    p.add_argument("--maxpool", choices=MAXPOOLS, default=opt.maxpool,
                   help="spiking max-pool: gate passes the input with the largest running sum "
                   "(Rueckauer sec. 3.6, default); running sends the increase of the window's "
                   "largest running sum (what it sent equals the largest input's total); relu "
                   "builds each 2x2 pool from two layers of IF units, max(a, b) = b + "
                   "relu(a - b) on rates (stock LIF processes only: runs on --target loihi2)")
    p.add_argument("--align", action="store_true",
                   help="delay the early inputs of a population (a shortcut) so that all its "
                   "inputs, and its bias, start at the same step (Delay processes in Lava)")
    p.add_argument("--calib-steps", type=COUNT, default=opt.calib_steps,
                   help="timesteps of the calibration runs of --balance/--zeta auto/"
                   f"--correction (default {opt.calib_steps})")
    p.add_argument("--calib-items", type=COUNT, default=opt.calib_items,
                   help=f"calibration items those runs use (default {opt.calib_items})")
    p.add_argument("--samples", type=COUNT, default=run.samples, help="evaluation items")
    p.add_argument("--calib-samples", type=COUNT, default=run.calib_samples,
                   help="calibration items")
    p.add_argument("--seed", type=SEED, default=run.seed)
    p.add_argument("--device", choices=DEVICES, default=run.device,
                   help="where calibration and the fast engine run (default cpu)")


class UsageError(LavaconvError):
    """The command line does not parse."""


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), raised, not exited."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="full tracebacks on internal errors")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("--max-seconds", type=_number(float, 0, 1e8, above=True), default=None,
                        help="stop (exit 2, nothing written) after this many seconds")
    ap = _Parser(prog="lavaconv", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", parents=[common],
                       help="convert a model to a float spiking network")
    _model_args(p)
    p.add_argument("--out", required=True, type=_out_dir, help="output directory")

    p = sub.add_parser("eval", parents=[common],
                       help="accuracy of the ANN and the SNN against timesteps")
    _model_args(p)
    p.add_argument("--timesteps", type=_timesteps, default=_timesteps(DEFAULT_TIMESTEPS))
    p.add_argument("--profile", help="also evaluate the integer network of this profile")
    _weights_arg(p)
    p.add_argument("--graph", choices=["ours", "stock"], default="ours",
                   help="integer network for lavaconv's processes, or for the graph of stock "
                        "Lava processes (LIF soft reset; needs --neuron rmp)")
    p.add_argument("--json", help="write the results to this JSON file")

    p = sub.add_parser("deploy", parents=[common],
                       help="quantize, run on Lava, verify bit-exactness, report")
    _model_args(p)
    p.add_argument("--target", choices=TARGETS, default=DeployConfig.target)
    p.add_argument("--graph", choices=GRAPHS, default=DeployConfig.graph,
                   help="processes: stock Lava only (LIF soft reset; what Loihi 2 runs), "
                        "lavaconv's own (CPU only), or auto: stock whenever the options allow")
    p.add_argument("--timesteps", type=COUNT, default=DeployConfig.timesteps)
    p.add_argument("--profile", default=DeployConfig.profile, help="profile name or YAML path")
    _weights_arg(p)
    p.add_argument("--lava-samples", type=COUNT, default=DeployConfig.lava_samples,
                   help="items run through Lava")
    p.add_argument("--compare-rate", action="store_true",
                   help="with --neuron sigma-delta: also evaluate the rate-coded network (CLI "
                        "defaults, stock LIF graph) on the same items and report both")
    p.add_argument("--out", default=DeployConfig.out, type=_out_dir, help="output directory")

    p = sub.add_parser("export", parents=[common], help="write a converted network as NIR or netx")
    p.add_argument("network", help="directory written by convert or deploy (network.json)")
    p.add_argument("--format", choices=["nir", "netx"], required=True)
    p.add_argument("--out", required=True, help="output file (.nir / .h5)")
    p.add_argument("--approximate", action="store_true",
                   help="netx: allow the stated approximations (biases from step 0)")
    p.add_argument("--profile", default=DeployConfig.profile,
                   help="netx, a float network (convert's directory): quantize it on netx's grid "
                   "with this profile's formats (default %(default)s)")
    p.add_argument("--timesteps", type=COUNT, default=DeployConfig.timesteps,
                   help="netx, a float network: steps the readout's range is sized for "
                   "(default %(default)s)")
    p.add_argument("--data", help="netx, a float network: calibration data for netx's grid "
                   "(default: the data recorded in network.json)")

    p = sub.add_parser("energy", parents=[common],
                       help="MACs, synaptic operations and energy per inference, ANN and SNN")
    p.add_argument("target", help="model file (the ANN alone) or a directory written by convert "
                   "or deploy (network.json; with --data)")
    p.add_argument("--input-shape", type=_shape, help="C,H,W of one item (model file)")
    p.add_argument("--data", help="network directory: measure its spikes on these items "
                   "(digits | fashion-mnist[:DIR] | FILE.npz)")
    p.add_argument("--model", help="network directory: its ANN (default: the model file "
                   "recorded in network.json)")
    p.add_argument("--arch", help="module:callable building the model for a state_dict")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a full nn.Module (runs code from the file)")
    p.add_argument("--timesteps", type=_timesteps, default=_timesteps("32,64,128"))
    p.add_argument("--samples", type=COUNT, default=500, help="evaluation items measured")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the fast engine runs (default cpu)")
    p.add_argument("--ann-profiles", type=_names, default=None, help="ANN profiles, names or "
                   "YAML paths (default stratix10tx-fpga,horowitz-45nm)")
    p.add_argument("--snn-profiles", type=_names, default=None, help="neuromorphic profiles "
                   "(default rolls,loihi1,loihi2,truenorth,spinnaker1)")
    p.add_argument("--json", action="store_true", help="print one JSON object, not tables")
    p.add_argument("--html", help="also write the tables and bar charts to this HTML file")

    p = sub.add_parser("profiles", parents=[common], help="list hardware profiles or show one")
    p.add_argument("name", nargs="?", help="profile name or YAML path")
    return ap


class TimeLimit(LavaconvError):
    """--max-seconds ran out."""


def _on_signal(signum, frame) -> None:
    if signum == signal.SIGALRM:
        raise TimeLimit("--max-seconds reached: stopped, nothing written")
    raise KeyboardInterrupt  # SIGTERM, SIGHUP: unwind like Ctrl-C so every finally cleans up


def _user_error(err: BaseException) -> LavaconvError | None:
    """The TimeLimit in ``err``'s chain (the alarm can strike inside code that re-raises what
    it catches as another error, as torch.fx's ShapeProp does), else ``err`` if it is a user
    error."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, TimeLimit):
        cause = cause.__cause__ or cause.__context__
    return cause or (err if isinstance(err, LavaconvError) else None)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except UsageError as err:
        print(f"lavaconv: error: {err}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        if not args.debug:  # library warnings are nothing a user can act on
            warnings.simplefilter("ignore")
            logging.getLogger("torch").setLevel(logging.ERROR)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the command of ``args``; every error ends as one line and an exit code."""
    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT),  # ignored after an interrupt
                **{s: signal.signal(s, _on_signal) for s in handled}}
    try:
        if args.max_seconds:
            signal.setitimer(signal.ITIMER_REAL, args.max_seconds)
        from lavaconv import distributed
        from lavaconv.app import commands
        from lavaconv.sim import heap

        heap.keep_freed_memory()
        distributed.init()
        return getattr(commands, args.command)(args)
    except KeyboardInterrupt:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # cleaned up: a repeat (a
            signal.signal(s, signal.SIG_IGN)  # supervisor's second SIGTERM) must not break it
        print("lavaconv: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place errors are reported
        if (user := _user_error(err)) is not None:
            print(f"lavaconv: error: {user}", file=sys.stderr)
            return 2
        if args.debug:
            traceback.print_exc()
        where = traceback.extract_tb(err.__traceback__)[-1]
        print(f"lavaconv: internal error: {type(err).__name__}: {err} "
              f"({Path(where.filename).name}:{where.lineno}; rerun with --debug)",
              file=sys.stderr)
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())

"""Fast batched PyTorch simulator of a :class:`~lavaconv.ir.network.Network`.

Implements the update equations of ``docs/design.md`` section 3 exactly, in float mode
(float32) and in integer mode (integers held exactly in float32 or float64, see
:class:`_Current`). Each synapse's input for all timesteps
is computed in one batched op: the payload train ``(T, B, ...)`` is folded into the batch
dimension, shifted by the one-step synapse delay. Convolutions run in channels-last layout.

In integer mode every synaptic sum is an integer. A synapse whose worst case
``max_o sum_i |W[o, i]| * max |payload|`` stays below 2**23 is computed in float32, which is
then exact whatever the order of summation (every partial sum is an integer below 2**24) and
never wraps; any other synapse runs in float64 (exact below 2**53), with Lava's 24-bit wrap
for convolutions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lavaconv.ir.fixedpoint import THRESHOLD_SHIFT
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout, Synapse
from lavaconv.sim.result import SimResult  # noqa: F401 - re-exported

#: ``probe(name, current, train)`` after each IF population: ``current`` (T, B, *shape) is
#: what the population adds to v at each step (synaptic input, gain and bias), ``train`` the
#: payload it sent (T, B, *shape).
Probe = Callable[[str, torch.Tensor, torch.Tensor], None]


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def encode_input(
    net: Network, x, timesteps: int, seed: int = 0, device: str | torch.device | None = "cpu"
) -> torch.Tensor:
    """Payload the input node sends at each step: ``(T, B, *shape)``.

    Analog: ``x / scale`` (float) or ``round(x * gain)`` clipped to the payload bits (int);
    Poisson: signed spikes with ``P(s = ±1) = |x| / scale`` (RMP-SNN sec. 3.1), seeded.
    """
    node = net.nodes[net.input_name]
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=_device(device))
    int_mode = net.numeric == "int"
    if node.encoding in ("analog", "delta"):  # delta: what the Delta encoder receives
        if int_mode:
            limit = 2 ** (node.payload_bits - 1) - 1
            p = torch.clamp(torch.round(x * node.gain), -limit, limit).to(torch.int64)
        else:
            p = (x / node.scale).to(torch.float32)
        return p.unsqueeze(0).expand(timesteps, *p.shape)
    if node.encoding != "poisson":
        raise ValueError(f"unknown input encoding {node.encoding!r}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand((timesteps, *x.shape), generator=gen, dtype=torch.float64).to(x.device)
    p = torch.sign(x) * (u < x.abs() / node.scale)
    return p.to(torch.int64 if int_mode else torch.float32)


def _plan(net: Network, syn: Synapse) -> tuple[torch.dtype, bool]:
    """Arithmetic of one synapse: (dtype of the sum, whether it must wrap to 24 bits)."""
    if net.numeric != "int":
        return torch.float32, False
    w = np.abs(syn.weight).reshape(len(syn.weight), -1).sum(axis=1).max(initial=0)
    if float(w) * net.max_payload(syn.source) < 2**23:
        return torch.float32, False
    return torch.float64, isinstance(syn, Conv)


def _pointwise(syn: Conv) -> bool:
    """A depthwise 1x1 convolution with stride 1 and no padding (one weight per channel)."""
    out_ch, in_per_group, kh, kw = syn.weight.shape
    return (kh, kw, in_per_group) == (1, 1, 1) and syn.groups == out_ch and tuple(
        syn.stride) == (1, 1) and tuple(syn.padding) == (0, 0)


def _apply_synapse(syn: Synapse, s: torch.Tensor, plan: tuple[torch.dtype, bool]) -> torch.Tensor:
    """Synaptic output for a batch of source payloads ``s`` (N, *src_shape)."""
    dtype, wrap = plan
    w = torch.as_tensor(syn.weight, dtype=dtype, device=s.device)
    if isinstance(syn, Dense):
        return s.to(dtype).flatten(1) @ w.T
    layout = torch.channels_last
    s = s.to(dtype=dtype, memory_format=layout)
    if _pointwise(syn):  # a per-channel scale (identity shortcut): no convolution needed
        a = s * w.reshape(1, -1, 1, 1)
        return wrap(a) if wrap else a
    a = F.conv2d(s, w.contiguous(memory_format=layout), stride=tuple(syn.stride),
                 padding=tuple(syn.padding), groups=syn.groups)
    return wrap(a) if wrap else a


def _widest(dtypes) -> torch.dtype:
    return torch.float64 if torch.float64 in set(dtypes) else torch.float32


def _like_layout(a: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Empty ``(steps, *a.shape[1:])`` tensor; maps (T, B, C, H, W) channels-last like conv
    outputs, so that copying ``a`` in and feeding the next convolution need no transpose."""
    if a.dim() != 5:
        return a.new_empty((steps, *a.shape[1:]), dtype=dtype)
    _, batch, ch, h, w = a.shape
    return a.new_empty((steps, batch, h, w, ch), dtype=dtype).permute(0, 1, 4, 2, 3)


def synaptic_input(
    net: Network, name: str, trains: dict[str, torch.Tensor], constant: set[str]
) -> torch.Tensor:
    """``a[t] = sum_e syn_e(p_src[t-1-d_e])`` for all t at once, 0 before a synapse's first
    arrival ``1 + d_e`` (one step of delay per synapse plus its own ``delay``). Float32 or
    float64; in int mode every entry is an exact integer."""
    syns = net.inputs_of(name)
    plans = [_plan(net, syn) for syn in syns]
    total = None
    for syn, plan in zip(syns, plans, strict=True):
        s = trains[syn.source]
        steps = s.shape[0]
        late = min(1 + syn.delay, steps)  # first step the synapse delivers
        if syn.source in constant:  # analog input: the same payload every step
            a = _apply_synapse(syn, s[0], plan)
            a = a.unsqueeze(0).expand(steps - late, *a.shape)
        else:
            a = _apply_synapse(syn, s[:steps - late].reshape(-1, *s.shape[2:]), plan)
            a = a.reshape(steps - late, s.shape[1], *a.shape[1:])
        if total is None:
            total = _like_layout(a, steps, _widest(p[0] for p in plans))
            total[:late] = 0
            total[late:] = a
        else:
            total[late:] += a
    return total


def _gain(a: torch.Tensor, a_exp: int) -> torch.Tensor:
    """Integer dendritic gain ``a * 2**(6 + a_exp)``, floor shift when negative (in place)."""
    shift = THRESHOLD_SHIFT + a_exp
    return a.__ilshift__(shift) if shift >= 0 else a.__irshift__(-shift)


def input_current(net: Network, node: IF | Readout, a: torch.Tensor) -> torch.Tensor:
    """What the population adds to v at each step, ``G(a[t]) + bias * [t >= t_start]``, for
    all t (a new tensor; int64 in int mode)."""
    a = _gain(a.to(torch.int64), node.a_exp) if net.numeric == "int" else a.clone()
    a[node.t_start:] += _tensor(node.bias, a)
    return a


class _Current:
    """``input_current(net, node, a)[t]`` one step at a time, in a reused buffer.

    In int mode the buffer has ``a``'s float dtype: float32 holds every integer below 2**24
    exactly, and the gain (a power of two) and the floor shift stay exact; where ``a << s`` +
    bias reaches 2**24 and rounds, the state is beyond the 24-bit bound whatever the rounding,
    so after saturation it is exact again (and so is the count of saturated neuron-steps).
    """

    def __init__(self, net: Network, node: IF | Readout, a: torch.Tensor) -> None:
        self.a, self.node = a, node
        self.int_mode = net.numeric == "int"
        self.x = torch.empty_like(a[0])
        self.bias = _tensor(node.bias, self.x)
        self.shift = THRESHOLD_SHIFT + node.a_exp

    def __call__(self, t: int) -> torch.Tensor:
        x = self.x
        if self.int_mode:
            x.copy_(self.a[t]).mul_(2.0**self.shift)
            if self.shift < 0:  # floor shift right
                x.floor_()
            if t >= self.node.t_start:
                x.add_(self.bias)
        elif t >= self.node.t_start:
            torch.add(self.a[t], self.bias, out=x)
        else:
            x.copy_(self.a[t])
        return x


def state_bounds(net: Network, node: IF | Readout) -> tuple[int, int] | None:
    """The range v saturates to (int mode), None in float mode."""
    if net.numeric != "int":
        return None
    return -(2 ** (node.state_bits - 1)), 2 ** (node.state_bits - 1) - 1


def _tensor(x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), device=like.device).to(like.dtype)


def _subtract(v: torch.Tensor, s: torch.Tensor, vth: torch.Tensor) -> None:
    """``v -= vth * s`` in place."""
    if vth.dim() == 0:
        v.sub_(s, alpha=vth.item())
    else:
        v.addcmul_(s, vth, value=-1)


def _saturate(v: torch.Tensor, bounds: tuple[int, int] | None) -> int:
    """Clip ``v`` to ``bounds`` in place; return how many entries were outside."""
    if bounds is None:
        return 0
    lo, hi = torch.aminmax(v)  # one pass; saturation is rare
    if lo >= bounds[0] and hi <= bounds[1]:
        return 0
    outside = torch.count_nonzero(v.lt(bounds[0]).logical_or_(v.gt(bounds[1])))
    v.clamp_(*bounds)
    return int(outside)


def _spike_count(v: torch.Tensor, vth: torch.Tensor, burst: int) -> torch.Tensor:
    """``sum_n [v >= n * vth]`` for n = 1 .. ``burst`` (in v's dtype)."""
    n = v.ge(vth).to(v.dtype)
    for k in range(2, burst + 1):
        n.add_(v.ge(vth * k).to(v.dtype))
    return n


def integrate_and_fire(node: IF, current: Callable[[int], torch.Tensor], steps: int,
                       out: torch.Tensor, bounds: tuple[int, int] | None) -> int:
    """Run the IF dynamics of :class:`~lavaconv.ir.network.IF` for ``steps`` steps on
    ``current(t)`` (what v receives at step t), writing the spikes s[t] (-burst .. burst)
    into ``out[t]`` (the payload not applied); return how many neuron-steps saturated (int
    mode)."""
    first = current(0)
    v = torch.zeros_like(first) + _tensor(node.v_init, first)
    vth = _tensor(node.v_threshold, v)
    memory = torch.zeros_like(v) if node.reset == "snm" else None
    saturated = 0
    for t in range(steps):
        v.add_(current(t))
        saturated += _saturate(v, bounds)
        s = _spike_count(v, vth, node.burst)  # burst spikes (Li & Zeng 2022); 1: v >= vth
        if memory is not None:  # SNM eq. 9: negative spikes only up to the memory
            s.sub_(torch.minimum(_spike_count(-v, vth, node.burst), memory.clamp(min=0)))
            memory.add_(s)  # SNM eq. 11
        if node.reset == "zero":  # reset to zero (Rueckauer eq. 4a)
            v.masked_fill_(s != 0, 0)
        else:  # reset by subtraction (Rueckauer eq. 4b, SNM eq. 10)
            _subtract(v, s, vth)
        out[t] = s
    return saturated


def _potential(u: torch.Tensor, bounds: tuple[int, int] | None) -> tuple[torch.Tensor, int]:
    """v[t] of a population that never spikes, for all t, and the neuron-steps saturated."""
    v = torch.cumsum(u, dim=0)
    if bounds is None or (v.min() >= bounds[0] and v.max() <= bounds[1]):
        return v, 0
    state = torch.zeros_like(u[0])
    saturated = 0
    for t in range(u.shape[0]):
        saturated += _saturate(state.add_(u[t]), bounds)
        v[t] = state
    return v, saturated


def readout_scores(node: Readout, u: torch.Tensor, checkpoints: Sequence[int],
                   bounds: tuple[int, int] | None = None, mode: str | None = None,
                   seed: int = 0) -> tuple[dict[int, torch.Tensor], int]:
    """Score per class at each checkpoint, whose argmax is the class, for the readout mode
    (default ``node.mode``; see :class:`~lavaconv.ir.network.Readout`), from the current ``u``
    (T, B, n) of :func:`input_current`; and the neuron-steps saturated."""
    mode = mode or node.mode
    if mode == "count":
        spiking = IF(node.shape, np.zeros(()), node.v_threshold, "subtract")
        out = torch.empty_like(u)
        saturated = integrate_and_fire(spiking, u.__getitem__, len(u), out, bounds)
        counts = torch.cumsum(out, dim=0)
        return {t: counts[t - 1] for t in checkpoints}, saturated
    v, saturated = _potential(u, bounds)
    if mode == "potential":
        return {t: v[t - 1] for t in checkpoints}, saturated
    # spiking softmax (Rueckauer sec. 3.5): one class fires per step, P = softmax(v / vth)
    p = torch.softmax(v.to(torch.float64) / _tensor(node.v_threshold, v).to(torch.float64), -1)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = torch.rand(v.shape[:-1], generator=gen, dtype=torch.float64).to(v.device)
    k = torch.searchsorted(torch.cumsum(p, -1), r.unsqueeze(-1)).clamp_(max=v.shape[-1] - 1)
    counts = torch.cumsum(F.one_hot(k.squeeze(-1), v.shape[-1]), dim=0)
    return {t: counts[t - 1] for t in checkpoints}, saturated


def maxpool_gate(node: MaxPool, s: torch.Tensor, bound: float | None = None) -> torch.Tensor:
    """Spiking max-pool of :class:`~lavaconv.ir.network.MaxPool`: rate-gated (Rueckauer sec.
    3.6: pass the payload of the input with the largest payload sum so far in each window;
    ties go to the first in row-major window order, padding never wins) or ``running`` (the
    increase of the window's largest payload sum). ``bound`` is the largest |payload|
    (scanned when None)."""
    steps = s.shape[0]
    bound = float(s.abs().max()) if bound is None else bound
    exact32 = bound * steps < 2**24  # then every running sum is exact in float32
    dtype = torch.float32 if exact32 else torch.float64
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    ho, wo = node.shape[1:]
    if node.mode == "running":  # sums are exact (exact32, or float64), so are their maxima
        sums = torch.cumsum(s.to(dtype), 0).flatten(0, 1)
        top = F.max_pool2d(sums, node.kernel, node.stride, node.padding)  # pads with -inf
        top = top.reshape(steps, *s.shape[1:3], ho, wo)
        return torch.diff(top, dim=0, prepend=torch.zeros_like(top[:1])).to(s.dtype)
    fill = -bound * steps - 1.0  # below any reachable sum (signed payloads too)
    counts = F.pad(torch.zeros_like(s[0], dtype=dtype), (pw, pw, ph, ph), value=fill)
    core = counts[..., ph:ph + s.shape[-2], pw:pw + s.shape[-1]]
    windows = [(..., slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))
               for i in range(kh) for j in range(kw)]
    out = s.new_empty((steps, *s.shape[1:3], ho, wo))
    for t in range(steps):
        core += s[t]
        payload = F.pad(s[t], (pw, pw, ph, ph)) if ph or pw else s[t]
        best, sent = counts[windows[0]], payload[windows[0]]
        for win in windows[1:]:
            better = counts[win] > best  # strict: the earlier input keeps a tie
            best = torch.where(better, counts[win], best)
            sent = torch.where(better, payload[win], sent)
        out[t] = sent
    return out


def _last_uses(net: Network) -> dict[str, str]:
    """Source node → the last node (in order) that reads it."""
    order = {name: i for i, name in enumerate(net.nodes)}
    uses = [(s.source, s.target) for s in net.synapses]
    uses += [(n.source, name) for name, n in net.nodes.items() if isinstance(n, MaxPool)]
    last: dict[str, str] = {}
    for src, dst in uses:
        if src not in last or order[dst] > order[last[src]]:
            last[src] = dst
    return last


def _exact_float32(fn):
    """Run ``fn`` with cuDNN's TF32 convolutions off: they round float32 operands to 10
    mantissa bits on a GPU, and the integer mode relies on exact float32 integer sums."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                         deterministic=cudnn.deterministic, allow_tf32=False):
            return fn(*args, **kwargs)

    return run


@_exact_float32
def simulate(
    net: Network,
    payload: torch.Tensor,
    checkpoints: Sequence[int] | None = None,
    *,
    seed: int = 0,
    probe: Probe | None = None,
    stop_after: str | None = None,
    counts_at: bool = False,
) -> SimResult:
    """Run ``net`` on a payload ``(T, B, *input_shape)`` from :func:`encode_input`.

    ``seed`` drives the spiking-softmax readout; ``probe`` sees every IF population's current
    and payload train; ``stop_after`` ends the run after that node (no readout scores then);
    ``counts_at`` keeps every neuron's spike events up to each checkpoint.
    """
    if net.is_sigma_delta:
        from lavaconv.sim import sigma_delta
        return sigma_delta.simulate(net, payload, checkpoints, counts_at=counts_at)
    steps = payload.shape[0]
    checkpoints = sorted(set(checkpoints or [steps]))
    if checkpoints[-1] > steps or checkpoints[0] < 1:
        raise ValueError(f"checkpoints must lie in [1, {steps}], got {checkpoints}")
    last_use = _last_uses(net)
    inp = net.nodes[net.input_name]
    trains: dict[str, torch.Tensor] = {net.input_name: payload}
    constant = {net.input_name} if inp.encoding == "analog" else set()
    result = SimResult({}, {}, {t: {} for t in checkpoints}, {},
                       counts_at={t: {} for t in checkpoints} if counts_at else None)
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            continue
        if isinstance(node, MaxPool):
            trains[name] = maxpool_gate(node, trains[node.source],
                                        net.max_payload(node.source))
            _count(result, name, trains[name], checkpoints, net.numeric, not net.is_binary(name))
        else:
            a = synaptic_input(net, name, trains, constant)
            if isinstance(node, Readout):
                u = input_current(net, node, a)
                result.readout, result.saturated[name] = readout_scores(
                    node, u, checkpoints, state_bounds(net, node), seed=seed)
                result.readout_input = u
            else:
                trains[name] = _fire(net, name, a, result, checkpoints, probe)
            del a
        for src in [s for s, last in last_use.items() if last == name and s in trains]:
            del trains[src]
        if name == stop_after:
            break
    return result


def _fire(net: Network, name: str, a: torch.Tensor, result: SimResult,
          checkpoints: Sequence[int], probe: Probe | None) -> torch.Tensor:
    """Run IF population ``name`` on its synaptic input ``a``; record its activity; return the
    float32 payload train it sends."""
    node = net.nodes[name]
    u = input_current(net, node, a) if probe is not None else None
    train = a if a.dtype == torch.float32 and u is None else torch.empty_like(
        a, dtype=torch.float32)
    result.saturated[name] = integrate_and_fire(node, _Current(net, node, a), len(a), train,
                                                state_bounds(net, node))
    _count(result, name, train, checkpoints, net.numeric, not net.is_binary(name))
    if not np.all(node.payload == 1):
        train.mul_(_tensor(node.payload, train))
    if probe is not None:
        probe(name, u, train)
    return train


def _count(result: SimResult, name: str, spikes: torch.Tensor, checkpoints: Sequence[int],
           numeric: str, graded: bool) -> None:
    """Spike events (positive, negative or bursts: ``graded``) per neuron and in total up to
    each checkpoint, from a float32 train whose nonzero entries are the events (float32 sums of
    fewer than 2**24 ones are exact)."""
    events = spikes.ne(0).to(torch.float32) if graded else spikes
    wide = events[0].numel() >= 2**24
    per_step = events.sum(dim=tuple(range(1, events.dim())),
                          dtype=torch.float64 if wide else torch.float32
                          ).cumsum(0, dtype=torch.float64)
    for t in checkpoints:
        result.spikes_at[t][name] = float(per_step[t - 1])
    dtype = torch.int64 if numeric == "int" else events.dtype
    if result.counts_at is not None:
        for t in checkpoints:
            result.counts_at[t][name] = events[:t].sum(dim=0).to(dtype)
    result.spike_counts[name] = events.sum(dim=0).to(dtype)

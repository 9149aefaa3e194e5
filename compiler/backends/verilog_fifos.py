"""FIFO depths of the Verilog dataflow pipeline's branches, computed from its schedule.

Where a tensor is read by several stages (a residual block's input: its first layer and the
shortcut) a bnnc_fork copies the stream, and the branches meet again at a bnnc_add. The short
branch's records wait in a FIFO until the long branch delivers the matching pixel; too shallow a
FIFO stalls the fork (throughput) and, below the long branch's lag, forever (deadlock). The depth
needed is a property of the schedule, not a guess:

- every stage turns its input stream into its output stream pixel by pixel; output pixel p needs
  input pixels up to `need[p]` (a sliding window: the whole bottom row of its window, as bnnc_swg
  waits for complete rows; a global sum: the frame; pointwise units: pixel p), costs `service`
  cycles (its slowest part: the window unit's KH*KW + 4 or the matrix unit's NF*SF folds) and
  leaves `latency` cycles after its last input arrived;
- the input arrives evenly at the pipeline's II (steady state: every stage runs at the
  bottleneck's rate), and with unbounded FIFOs each stage's output times follow the max-plus
  recurrence t[p] = max(t_in[need[p]] + latency, t[p-1] + service) over several frames;
- a FIFO's occupancy is the records that arrived and were not yet taken by its consumer (window
  units take records as they come, into their row buffers; pointwise units when they start the
  pixel, a join when both its inputs are there). Its depth is the largest occupancy plus
  FIFO_SLACK, and at least the pipeline's ordinary FIFO depth.

Any consumer order is deadlock-free with these depths: a join waits for pixel p of the long
branch only until the records that pixel needs have arrived, and the short branch's FIFO holds
every record from p to there (the schedule counts them at that moment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAMES = 3  # frames of the schedule: the second and third see the previous frames' tails
FIFO_SLACK = 2  # records beyond the schedule's occupancy: the fork's and the consumer's input registers


@dataclass
class Unit:
    """One stage as the schedule sees it (a frame's worth of output pixels)."""
    name: str
    inputs: list  # producer names ("input" for the quantized input stream)
    need: np.ndarray  # per output pixel of a frame: index of the last input pixel it needs
    in_pixels: int  # input pixels per frame
    service: int  # cycles per output pixel at full speed
    latency: int  # cycles from its last needed input to the output pixel in the stage's FIFO
    buffered: bool  # takes its input records as they arrive (row buffer, running sum)


def window_need(ih: int, iw: int, kh: int, sh: int, pt: int, oh: int, ow: int) -> np.ndarray:
    """Last input pixel of each window (raster order): the end of its bottom row."""
    bottom = np.minimum(np.arange(oh) * sh - pt + kh - 1, ih - 1)
    return np.repeat((bottom + 1) * iw - 1, ow)


def pointwise_need(pixels: int) -> np.ndarray:
    return np.arange(pixels)


def frames_of(per_frame: np.ndarray, in_pixels: int) -> np.ndarray:
    """Per-frame indices repeated over FRAMES frames, offset by the frame's first input."""
    return np.concatenate([per_frame + f * in_pixels for f in range(FRAMES)])


def output_times(need: np.ndarray, arrival: np.ndarray, service: int, latency: int) -> np.ndarray:
    """Max-plus recurrence t[p] = max(arrival[need[p]] + latency, t[p-1] + service), vectorised:
    t[p] = service * p + max over q <= p of (a[q] - service * q)."""
    a = arrival[need] + latency
    k = service * np.arange(len(a), dtype=np.int64)
    return k + np.maximum.accumulate(a - k)


def schedule(units: list, input_pixels: int, ii: float) -> dict:
    """{name: output times over FRAMES frames} with the input arriving evenly at `ii` per frame."""
    rate = ii / input_pixels
    times = {"input": np.ceil(np.arange(1, FRAMES * input_pixels + 1) * rate).astype(np.int64)}
    for u in units:
        need = frames_of(u.need, u.in_pixels)
        arrival = np.max([times[i] for i in u.inputs], axis=0) if len(u.inputs) > 1 else times[u.inputs[0]]
        times[u.name] = output_times(need, arrival, u.service, u.latency)
    return times


def taken_times(u: Unit, times: dict, producer: str) -> np.ndarray:
    """When unit u takes each record of `producer` from its input FIFO."""
    arrival = times[producer]
    if u.buffered:
        return arrival
    return times[u.name] - u.latency  # a pointwise unit or a join: when the pixel starts


def occupancy(arrival: np.ndarray, taken: np.ndarray) -> int:
    """Largest number of records in a FIFO that gets record i at arrival[i] and loses it at taken[i]."""
    left_before = np.searchsorted(np.sort(taken), arrival, side="left")  # taken strictly earlier
    return int(np.max(np.arange(1, len(arrival) + 1) - left_before))


def depth(arrival: np.ndarray, taken: np.ndarray, minimum: int) -> int:
    return max(minimum, occupancy(arrival, taken) + FIFO_SLACK)

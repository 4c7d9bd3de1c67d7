"""A KV cache for CPU generation that is written in place instead of concatenated at every step.

transformers' DynamicCache appends each new token's keys and values with torch.cat, which copies the
whole cache of every layer at every decode step. At the bench model's batch 8 (415 prompt tokens, 20
layers, fp32 keys and values) that is ~130 MB copied per token: 83 cat calls and ~14 ms of a ~90 ms step
in torch's profiler. Here each layer allocates its buffers once, for the prompt plus the tokens to be
generated, writes the new keys and values into the next free positions, and hands the attention a view of
the filled part. The attention reads the same values in the same order, so the tokens are exactly those of
the DynamicCache (checked on each preset's architecture in the tests).

Only where it is equivalent by construction: full-attention layers, and sliding-window layers while the
sequence is shorter than the window (longer than that, such a layer goes back to transformers' own update,
which drops the oldest positions). A cache whose layers are of any other kind is left to transformers.
Only on CPU, where it was measured. MEDVLM_CPU_KV_CACHE=dynamic turns it off.
"""

from __future__ import annotations

import functools
import os

from ...errors import ModelUnavailable

KV_CACHE_ENV = "MEDVLM_CPU_KV_CACHE"  # "inplace" (default) or "dynamic"
DESCRIPTION = "KV cache written in place"


def choice() -> str:
    value = os.environ.get(KV_CACHE_ENV, "inplace")
    if value not in ("inplace", "dynamic"):
        raise ModelUnavailable(f"{KV_CACHE_ENV} must be inplace or dynamic (got {value!r}).")
    return value


def cache_argument() -> str:
    """The keyword generate() takes a cache under: `cache` in recent transformers, `past_key_values` before."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


class _InPlace:
    """Mixin for a transformers cache layer: keys and values live in buffers sized once, grown only if needed."""

    def __init__(self, capacity: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.capacity, self._buffers, self._spilled = capacity, None, False

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._buffers is None:
            batch, heads, _, dim = key_states.shape
            size = max(self.capacity, n)
            self._buffers = (key_states.new_empty(batch, heads, size, dim),
                             value_states.new_empty(batch, heads, size, value_states.shape[-1]))
            self._filled = 0
        end = self._filled + n
        if end > self._buffers[0].shape[2]:  # more tokens than planned: a larger buffer, copied once
            def larger(buf):
                out = buf.new_empty(buf.shape[0], buf.shape[1], max(end, 2 * buf.shape[2]), buf.shape[3])
                out[:, :, :self._filled] = buf[:, :, :self._filled]
                return out

            self._buffers = tuple(larger(b) for b in self._buffers)
        keys, values = self._buffers
        keys[:, :, self._filled:end] = key_states
        values[:, :, self._filled:end] = value_states
        self._filled = end
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values

    def reset(self) -> None:
        self._buffers, self._spilled = None, False
        super().reset()


@functools.lru_cache(maxsize=None)
def _layer_classes():
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    class InPlaceLayer(_InPlace, DynamicLayer):
        pass

    class InPlaceSlidingLayer(_InPlace, DynamicSlidingWindowLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            past_window = self.cumulative_length + key_states.shape[-2] >= self.sliding_window
            if self._spilled or getattr(self, "record_past", False) or past_window:
                # From here on the window drops positions: transformers' own update, on the values so far.
                self._spilled, self._buffers = True, None
                return DynamicSlidingWindowLayer.update(self, key_states, value_states, *args, **kwargs)
            self.cumulative_length += key_states.shape[-2]
            return super().update(key_states, value_states)

    return DynamicLayer, DynamicSlidingWindowLayer, InPlaceLayer, InPlaceSlidingLayer


def new_cache(model, capacity: int):
    """A DynamicCache for `model` whose layers are written in place, or None where its layers are not the two kinds."""
    try:
        from transformers import DynamicCache

        plain, sliding, inplace, inplace_sliding = _layer_classes()
        cache = DynamicCache(config=model.config)
    except (ImportError, TypeError, ValueError, AttributeError, KeyError):
        return None
    layers = []
    for layer in getattr(cache, "layers", ()):
        if type(layer) is plain:
            layers.append(inplace(capacity))
        elif type(layer) is sliding and isinstance(getattr(layer, "sliding_window", None), int):
            layers.append(inplace_sliding(capacity, layer.sliding_window))
        else:
            return None
    if not layers:
        return None
    cache.layers = layers
    return cache

"""Reads a model's BatchLimits from its ModelConfig (dynamic_batching, queue policies)."""

from __future__ import annotations

import logging

from infergate.batching.policy import BatchLimits, QueuePolicy
from infergate.proto import model_config_pb2 as mc

logger = logging.getLogger(__name__)

ADAPTIVE_DELAY_PARAMETER = "adaptive_queue_delay"  # "on" (default) or "off": see BatchLimits.is_delay_adaptive


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=int(policy.max_queue_size),
        default_timeout_us=int(policy.default_timeout_microseconds),
        allow_timeout_override=bool(policy.allow_timeout_override),
    )


def limits_from_config(config: mc.ModelConfig) -> BatchLimits:
    """Returns the batching limits a validated ModelConfig asks for."""
    if not config.HasField("dynamic_batching"):
        return BatchLimits(max_batch_size=config.max_batch_size, is_dynamic=False)
    batching = config.dynamic_batching
    levels = int(batching.priority_levels) or 1
    return BatchLimits(
        max_batch_size=config.max_batch_size,
        is_dynamic=True,
        max_queue_delay_us=int(batching.max_queue_delay_microseconds),
        preferred_batch_sizes=tuple(int(s) for s in batching.preferred_batch_size),
        priority_levels=levels,
        default_priority_level=int(batching.default_priority_level) or 1,
        queue_policies={int(level): _queue_policy(p) for level, p in batching.priority_queue_policy.items()},
        default_queue_policy=_queue_policy(batching.default_queue_policy),
        is_delay_adaptive=_is_delay_adaptive(config),
    )


def _is_delay_adaptive(config: mc.ModelConfig) -> bool:
    value = config.parameters[ADAPTIVE_DELAY_PARAMETER].string_value if \
        ADAPTIVE_DELAY_PARAMETER in config.parameters else "on"
    if value not in ("on", "off"):
        logger.warning("model '%s': parameter %s is '%s', not 'on' or 'off'; using 'on'", config.name,
                       ADAPTIVE_DELAY_PARAMETER, value)
    return value != "off"

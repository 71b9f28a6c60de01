"""A model's BatchLimits, from the dynamic_batching and parameters of its validated ModelSpec."""

from __future__ import annotations

import logging
import math

from infergate.batching.policy import BatchLimits, QueuePolicy
from infergate.models.config import ModelSpec, QueuePolicySpec
from infergate.models.errors import ConfigError

logger = logging.getLogger(__name__)

ADAPTIVE_DELAY_PARAMETER = "adaptive_queue_delay"  # "on" (default) or "off": see BatchLimits.is_delay_adaptive
# Seconds one batch may run before its requests fail and its instance is replaced; overrides the server's
# --model-execution-timeout-s for this model ("0": no limit).
EXECUTION_TIMEOUT_PARAMETER = "model_execution_timeout_s"


def _queue_policy(policy: QueuePolicySpec) -> QueuePolicy:
    return QueuePolicy(max_queue_size=policy.max_queue_size, default_timeout_us=policy.default_timeout_us,
                       allow_timeout_override=policy.allow_timeout_override)


def limits_for(spec: ModelSpec) -> BatchLimits:
    """Returns the batching limits a validated model config asks for."""
    batching = spec.dynamic_batching
    if batching is None:
        return BatchLimits(max_batch_size=spec.max_batch_size, is_dynamic=False)
    return BatchLimits(
        max_batch_size=spec.max_batch_size,
        is_dynamic=True,
        max_queue_delay_us=batching.max_queue_delay_us,
        preferred_batch_sizes=batching.preferred_batch_sizes,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        queue_policies={level: _queue_policy(policy) for level, policy in batching.priority_queue_policies},
        default_queue_policy=_queue_policy(batching.default_queue_policy),
        is_delay_adaptive=_is_delay_adaptive(spec),
    )


def _is_delay_adaptive(spec: ModelSpec) -> bool:
    value = spec.parameters.get(ADAPTIVE_DELAY_PARAMETER, "on")
    if value not in ("on", "off"):
        logger.warning("model '%s': parameter %s is '%s', not 'on' or 'off'; using 'on'", spec.name,
                       ADAPTIVE_DELAY_PARAMETER, value)
    return value != "off"


def execution_timeout_s(spec: ModelSpec, server_default_s: float) -> float:
    """The model's execution timeout (0: none): its parameter, else the server's flag. Raises ConfigError."""
    text = spec.parameters.get(EXECUTION_TIMEOUT_PARAMETER)
    if text is None:
        return server_default_s
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"model '{spec.name}': parameter {EXECUTION_TIMEOUT_PARAMETER} is '{text}', expected "
                          "a number of seconds >= 0 (0: no limit)")
    return value

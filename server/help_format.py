"""The --help layout every infergate command shares: each default shown once."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not where the help already says it, nor for a flag that is unset by default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, [], (), "", False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)

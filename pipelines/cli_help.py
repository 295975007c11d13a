"""The ``--help`` formatter every ``streamrecon`` command's parser uses.

It lives apart from the dispatcher (:mod:`pipelines.cli`) because the
dispatcher imports the commands' modules by name: were the formatter there,
each command module importing it would close an import circle with the
dispatcher.
"""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every command's ``--help``: an option's default shown once, and only when there is one to show.

    argparse's defaults formatter appends "(default: X)" to every option, also
    to those whose help already states the default in words and to those
    whose default is None or False (nothing to say).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)

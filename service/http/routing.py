"""How the standard protocols address a model: by name, or by name pinned to one of its versions."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint


def model_route(routes: Blueprint, method: str, prefix: str, action: str = "") -> Callable:
    """Register a view at ``{prefix}/<name>{action}`` and ``{prefix}/<name>/versions/<version>{action}``;
    the view takes ``name`` and ``version`` (None when the request names none)."""

    def register(view: Callable) -> Callable:
        for rule in (f"{prefix}/<name>{action}", f"{prefix}/<name>/versions/<version>{action}"):
            routes.add_url_rule(rule, view_func=view, methods=[method])
        return view

    return register

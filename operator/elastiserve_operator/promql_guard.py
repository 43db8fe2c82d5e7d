"""Confine a tenant's PromQL to its own namespace: a parser-based rewrite, not string pasting.

An ``ElasticModel`` may bring its own latency and request-rate queries. The operator runs
them with its own Prometheus access, which sees every tenant's series, so a query written as
``sum(rate(other_teams_requests_total[1m]))`` would read another namespace's traffic. This
module parses the query (``promql_parser``: Rust bindings of GreptimeTeam's PromQL parser),
adds ``<label>="<namespace>"`` to every vector selector (inside range selectors, subqueries
and function arguments too), prints the tree back, and checks the printed text by parsing it
again: every selector of what is sent must carry the matcher. An added equality matcher is
a conjunction, so whatever else a selector says (``namespace=~".*"``, ``{__name__=~".+"}``)
it can only narrow the result; a selector that names the label otherwise is refused instead,
so that a tenant learns at once that ``namespace="other"`` is not theirs to ask for (its own,
``namespace="$namespace"`` as the chart's default queries write it, is kept).

Refused outright (``QueryRefused``, reported as ``PolicyViolation``): what does not parse;
the ``or`` form of selector matchers (``{a="x" or b="y"}``, which the library prints wrongly);
strings or label values with a quote, a backslash or a control character (the library
prints string literals without escaping them, so such a value could end a string early
in the printed query and start a selector of its own; refusing them leaves nothing to
escape); the ``@`` modifier; ranges, subquery steps and offsets longer than the limit (a
tenant's query may not make Prometheus read days of samples every few seconds).

Pure: no I/O. ``confine`` is cached (a model's queries are the same every evaluation).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable

import promql_parser as pq

__all__ = ["QueryRefused", "confine"]

_UNSAFE = frozenset({'"', "\\", "`", "'"} | {chr(c) for c in range(0x20)} | {"\x7f"})
"""Characters the library's printer would not escape (quotes, backslash, controls)."""


class QueryRefused(ValueError):
    """The query cannot be confined; the message says why (shown in the CR's status)."""


def _check_text(what: str, value: str) -> None:
    bad = sorted({c for c in value if c in _UNSAFE})
    if bad:
        raise QueryRefused(f"{what} {value[:60]!r} contains {', '.join(repr(c) for c in bad)}: "
                           "quotes, backslashes and control characters are not accepted")


def _duration(what: str, value: datetime.timedelta | None, limit_s: float) -> None:
    if value is not None and abs(value.total_seconds()) > limit_s:
        raise QueryRefused(f"{what} {pq.display_duration(abs(value))} is longer than the "
                           f"{limit_s:.0f} s the operator allows")


def _inspect(label: str, namespace: str, limit_s: float) -> Callable[[pq.Expr], None]:
    """A ``walk`` visitor that refuses what cannot be confined (see the module docstring)."""

    def visit(node: pq.Expr) -> None:
        if isinstance(node, pq.VectorSelector):
            if node.at is not None:
                raise QueryRefused("the @ modifier is not accepted")
            _duration("offset", node.offset, limit_s)
            if node.matchers.or_matchers:
                raise QueryRefused("'or' between selector matchers is not accepted")
            if node.name is not None:
                _check_text("metric name", node.name)
            for matcher in node.matchers.matchers:
                _check_text("label name", matcher.name)
                _check_text("label value", matcher.value)
                own = matcher.op == pq.MatchOp.Equal and matcher.value == namespace
                if matcher.name == label and not own:
                    raise QueryRefused(
                        f"selector {node} asks for {label} other than {namespace!r}: the "
                        f"operator confines every selector to {label}=\"{namespace}\"")
        elif isinstance(node, pq.MatrixSelector):
            _duration("range", node.range, limit_s)
        elif isinstance(node, pq.SubqueryExpr):
            if node.at is not None:
                raise QueryRefused("the @ modifier is not accepted")
            _duration("subquery range", node.range, limit_s)
            _duration("subquery step", node.step, limit_s)
            _duration("offset", node.offset, limit_s)
        elif isinstance(node, pq.StringLiteral):
            _check_text("string", node.val)

    return visit


def _add_matcher(label: str, namespace: str) -> Callable[[pq.Expr], pq.Expr | None]:
    def post(node: pq.Expr) -> pq.Expr | None:
        if not isinstance(node, pq.VectorSelector):
            return None
        kept = [m for m in node.matchers.matchers if m.name != label]  # ours, if any
        matchers = [*kept, pq.Matcher(pq.MatchOp.Equal, label, namespace)]
        node.matchers = pq.Matchers(matchers)
        # A freshly parsed node: ``transform`` ignores a returned node changed in place.
        return pq.parse(str(node))

    return post


def _confined(text: str, label: str, namespace: str) -> bool:
    """Whether every selector of ``text`` (parsed afresh) carries exactly our matcher."""
    found: list[bool] = []

    def visit(node: pq.Expr) -> None:
        if isinstance(node, pq.VectorSelector):
            ours = [m for m in node.matchers.matchers if m.name == label]
            found.append(
                not node.matchers.or_matchers and len(ours) == 1
                and ours[0].op == pq.MatchOp.Equal and ours[0].value == namespace
            )

    pq.walk(pq.parse(text), visit)
    return all(found)


@functools.lru_cache(maxsize=2048)
def confine(query: str, namespace: str, *, label: str = "namespace",
            max_range_s: float = 3600.0) -> str:
    """``query`` with ``label="namespace"`` on every selector, or ``QueryRefused``.

    ``query`` is the rendered query (placeholders already filled). ``namespace`` must itself
    be a plain value (a Kubernetes namespace name always is).
    """
    _check_text("namespace", namespace)
    try:
        tree = pq.parse(query)
    except (ValueError, TypeError) as error:
        raise QueryRefused(f"not a PromQL expression: {error}") from None
    except BaseException as error:  # the bindings raise their own types for some inputs
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        raise QueryRefused(f"not a PromQL expression: {error}") from None
    pq.walk(tree, pre_visit=_inspect(label, namespace, max_range_s))
    text = str(pq.transform(tree, post_visit=_add_matcher(label, namespace)))
    try:
        confined = _confined(text, label, namespace)
    except ValueError as error:
        raise QueryRefused(f"the rewritten query does not parse ({error}): refused") from None
    if not confined:
        raise QueryRefused("the rewritten query lost the namespace matcher: refused")
    return text

"""What ``compare --methods`` words stand for: method names, and selectors of several methods, mixed.

    >>> expand_methods(["hybridhash", "baselines"])
    ('hybridhash', 'itq', 'lsh', 'pcah', 'sh')

Selectors are decided by what the methods declare (``trains_on``, ``family``, ``in_default_grid``) and
by the registry of training-free baselines, never by a method's name.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from ...errors import ConfigError
from ...methods.base import FAMILIES

# --methods words that stand for several methods, each decided by the methods' declared properties:
# the supervised ones, each family (symmetric, asymmetric, central, classification, unsupervised),
# and the training-free baselines
SELECTORS = ("all", "supervised", *FAMILIES, "baselines")


def saw_labels(method: str) -> bool:
    """Whether ``method``'s training reads the labels (a fit never does)."""
    from ...methods import is_training_free, method_class

    return not is_training_free(method) and method_class(method).trains_on == "labels"


def selector_methods(selector: str) -> List[str]:
    """The methods a selector of :data:`SELECTORS` stands for: ``all`` and ``supervised`` those that
    train on labels, a family's name the methods of that family, ``baselines`` the training-free ones.
    A method outside the default grid (``in_default_grid`` False, e.g. a partial port) runs only when named."""
    from ...methods import SHALLOW, list_methods, method_class
    from ..train.feeds import methods_training_on

    if selector in ("all", "supervised"):
        return [m for m in methods_training_on("labels") if method_class(m).in_default_grid]
    if selector in FAMILIES:
        return [m for m in list_methods() if method_class(m).family == selector and method_class(m).in_default_grid]
    if selector == "baselines":
        return sorted(SHALLOW)
    raise ConfigError(f"--methods: unknown selector {selector!r}; selectors: {', '.join(SELECTORS)}")


def known_methods() -> List[str]:
    """Every name a grid can run: the registered methods, then the training-free baselines."""
    from ...methods import SHALLOW, list_methods

    return [*list_methods(), *sorted(SHALLOW)]


def unknown_method(option: str, name: str) -> ConfigError:
    return ConfigError(f"{option}: unknown method {name!r}; known: {', '.join(known_methods())}; "
                       f"or a selector: {', '.join(SELECTORS)}")


def expand_methods(words: Sequence[str]) -> Tuple[str, ...]:
    """``--methods`` words (names and selectors, mixed) -> method names in the order given, each once.

    ``all`` stands alone (the supervised methods, as before selectors); a name given twice is
    refused, a name a selector also brings is kept once.
    """
    words = list(words)
    if "all" in words and len(words) > 1:
        raise ConfigError(f"--methods: 'all' stands alone (or use the selector 'supervised'), got {' '.join(words)}")
    known = set(known_methods())
    out: List[str] = []
    named = set()
    for w in words:
        if w in SELECTORS:
            out += [m for m in selector_methods(w) if m not in out]
            continue
        if w not in known:
            raise unknown_method("--methods", w)
        if w in named:
            raise ConfigError(f"--methods lists a method twice: {' '.join(words)}")
        named.add(w)
        if w not in out:
            out.append(w)
    return tuple(out)

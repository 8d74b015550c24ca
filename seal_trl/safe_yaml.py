"""Reading YAML that anyone may have written: no duplicate keys, and aliases expanded only so far.

`yaml.safe_load` builds no objects from tags, but it takes a mapping whose key repeats (the last one silently
wins) and a 2 KB "billion laughs" file of nested aliases, whose expansion is harmless in memory (aliases share
one object) until anything walks it: printing or copying it hangs. `load_yaml` refuses both with a
`yaml.YAMLError` that carries the line, like any other YAML error.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

#: Values (scalars, lists, mappings) the document may hold once every alias is expanded; a recipe holds ~100.
MAX_EXPANDED_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping (merge keys `<<` may still be overridden)."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeConstructor says so itself
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice (first at line {first.line + 1}); keep one",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def expanded_size(root: Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """How many nodes `root` holds with every alias expanded; a `yaml.YAMLError` past `limit` or on a cycle."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the node that contains it",
                                              node.start_mark)
        open_nodes.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                raise yaml.composer.ComposerError(
                    None, None, f"its aliases expand to more than {limit:,} values (an alias bomb?)",
                    node.start_mark)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load_yaml(text: str, *, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """`yaml.safe_load(text)`, refusing repeated keys and documents that expand past `max_nodes` values."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node, max_nodes)
        return loader.construct_document(node)
    finally:
        loader.dispose()

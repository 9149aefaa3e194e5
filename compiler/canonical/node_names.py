"""Every node named: an unnamed node is called `<op_type>_<k>`, k its position in the graph (a
suffix keeps names unique). Messages, reports, generated-code comments and `verify --trace` name
nodes this way, and the trace finds them again in the original model by the same rule.

Preserves exactly: node names do not take part in what a graph computes.
"""

from __future__ import annotations

import onnx

from .graph_edit import copy_model


def node_names(graph: onnx.GraphProto) -> list:
    """The name of each node of `graph`, in order: its own, or `<op_type>_<k>` for an unnamed one."""
    taken = {n.name for n in graph.node if n.name}
    names = []
    for k, n in enumerate(graph.node):
        name = n.name
        if not name:
            name, extra = f"{n.op_type}_{k}", 1
            while name in taken:
                name, extra = f"{n.op_type}_{k}_{extra}", extra + 1
            taken.add(name)
        names.append(name)
    return names


def name_unnamed_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    if all(n.name for n in model.graph.node):
        return model
    out = copy_model(model)
    for n, name in zip(out.graph.node, node_names(out.graph)):
        n.name = name
    return out

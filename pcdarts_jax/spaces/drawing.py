"""The look every space's cell pictures share (graphviz; the package is imported
only when a picture is drawn)."""


def digraph(title: str = ''):
  """An empty left-to-right graphviz Digraph in the cell pictures' style."""
  import graphviz  # pylint: disable=g-import-not-at-top  (optional at import time)
  return graphviz.Digraph(
      format='png',
      graph_attr={'rankdir': 'LR', 'fontname': 'helvetica', 'label': title, 'labelloc': 't',
                  'fontsize': '20'},
      node_attr={'style': 'filled', 'shape': 'rect', 'align': 'center', 'fontsize': '20',
                 'height': '0.5', 'width': '0.5', 'penwidth': '2', 'fontname': 'helvetica'},
      edge_attr={'fontsize': '18', 'fontname': 'helvetica'})

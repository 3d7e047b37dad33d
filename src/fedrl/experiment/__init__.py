"""What the simulator, the server and the edge agent share: the experiment config and its loading
(``config``, ``loading``), the setup it builds (``setup``), aggregation of a round (``aggregation``),
policy cards (``card``), round callbacks and TensorBoard files (``callbacks``) and the live
dashboard page (``dashboard``)."""

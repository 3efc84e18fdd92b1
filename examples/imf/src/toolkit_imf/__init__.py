"""iMF, Improved Mean Flows (arXiv 2512.02012), as a meanflow-toolkit plugin: the objective
``imf`` (both backends) and the sampler ``imf``. See :mod:`toolkit_imf.plugin` for the method."""

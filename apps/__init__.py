"""The Streamlit app (``interp app``): pages in ``views/``, computation in :mod:`interp.apps.compute`, state in :mod:`interp.apps.ui`."""

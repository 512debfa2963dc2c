"""The Streamlit app (``interp app``): pages in ``views/``, computation in :mod:`apps.compute`, state in :mod:`apps.ui`."""

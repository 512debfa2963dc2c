"""The Streamlit app (``interp app``): pages in ``views/``, state in :mod:`interp.apps.ui`, inputs checked in :mod:`interp.apps.inputs`; every number shown comes from the library."""

"""``deeplab serve``: a web page and a REST API over the segmenter (app.py)."""

"""`masksmith label`: a local web page to draw and correct masks of a dataset, with a model's help.

layout.py finds the image folders and where their masks go (discover's layouts), store.py is the
dataset side (image ids, states, reading and saving masks in the dataset's encoding, conflicts),
provenance.py the file that records who made each mask, predictions.py the model's predictions and
the "label next" ranking, assist.py the region assist, app.py the routes and server.py the command.
Needs the serve extra (FastAPI, uvicorn), like `masksmith serve`.
"""

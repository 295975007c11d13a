"""The shipped pipelines as python-ismrmrd-server modules (Siemens FIRE / OpenRecon).

python-ismrmrd-server imports a module named by the scan's config and calls
``process(connection, config, metadata)``. Each ``streamrecon_<pipeline>.py``
here is such a module for one shipped pipeline XML; all of them run the
project's own gadget chain (:mod:`pipelines.fire.adapter`), the same one the
embedded host and Gadgetron run, with the images in that server's
conventions (int16, ``DataRole``, window, ``SeriesDescription``).

Two ways to let the server find them: put this folder on ``PYTHONPATH``
(config ``streamrecon_kgmgt_cine``), or install the project and name the
module in full (config ``pipelines.fire.streamrecon_kgmgt_cine``).
"""

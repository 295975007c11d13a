"""python-ismrmrd-server module (FIRE/OpenRecon config `streamrecon_sgfmri_multicontrast_triton`): pipelines/sgfmri_multicontrast_triton.xml through the project's gadgets."""
from pipelines.fire.adapter import run


def process(connection, config, metadata) -> None:
    run("sgfmri_multicontrast_triton", connection, config, metadata)

"""python-ismrmrd-server module (FIRE/OpenRecon config `streamrecon_sgfmri_multicontrast`): pipelines/sgfmri_multicontrast.xml through the project's gadgets."""
from pipelines.fire.adapter import run


def process(connection, config, metadata) -> None:
    run("sgfmri_multicontrast", connection, config, metadata)

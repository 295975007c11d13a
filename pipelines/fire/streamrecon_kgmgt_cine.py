"""python-ismrmrd-server module (FIRE/OpenRecon config `streamrecon_kgmgt_cine`): pipelines/kgmgt_cine.xml through the project's gadgets."""
from pipelines.fire.adapter import run


def process(connection, config, metadata) -> None:
    run("kgmgt_cine", connection, config, metadata)

"""python-ismrmrd-server module (FIRE/OpenRecon config `streamrecon_kgmgt_cine_triton`): pipelines/kgmgt_cine_triton.xml through the project's gadgets."""
from pipelines.fire.adapter import run


def process(connection, config, metadata) -> None:
    run("kgmgt_cine_triton", connection, config, metadata)

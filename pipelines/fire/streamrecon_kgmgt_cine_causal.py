"""python-ismrmrd-server module (FIRE/OpenRecon config `streamrecon_kgmgt_cine_causal`): pipelines/kgmgt_cine_causal.xml through the project's gadgets."""
from pipelines.fire.adapter import run


def process(connection, config, metadata) -> None:
    run("kgmgt_cine_causal", connection, config, metadata)

"""The single-vm rung, moving here piece by piece: so far its failure model (`failure`). Its
Pulumi component is still blueprints/single_vm.py, its bootstrap blueprints/render/single_vm.py
and its failover commands blueprints/failover/.
"""

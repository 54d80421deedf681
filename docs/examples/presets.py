import brainsparse as bs

print(bs.method_names())  # dense, static, set, rigl, cht, chts, chtss, granet, mest, ctre, neuroprune
chts = bs.resolve_method("chts")
print(chts.init, chts.init_params, chts.removal_rule, chts.regrowth, chts.regrowth_rule)

# any field can be overridden by name; bad values fail at once with the allowed choices
faster = bs.resolve_method("chts", regrowth_exact=False, drop_fraction=0.2)
print(faster.to_dict())
try:
    bs.resolve_method("chts", regrowth="magic")
except bs.BrainsparseError as err:
    print(err)  # unknown regrowth score 'magic'; allowed: random, gradient, ...

from envkit.errors import EnvkitError, all_error_classes


def test_every_error_class_has_its_own_exit_code():
    codes = {}
    for cls in all_error_classes():
        if cls is EnvkitError:
            continue
        assert cls.exit_code not in codes, f"{cls.__name__} shares exit code {cls.exit_code} with {codes.get(cls.exit_code)}"
        codes[cls.exit_code] = cls.__name__
    assert all(2 < c < 256 for c in codes if c != 1)

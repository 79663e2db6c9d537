"""What tests/tests/deploy.rs asks of the files in deploy/, with the PyYAML
and jsonschema of the venv that scripts/setup.sh makes:

    manifests.py json FILE...                 every YAML document of the files, as one JSON array
    manifests.py check-compose FILE SCHEMA    FILE against the Compose Specification's JSON schema
"""

import json
import sys

import jsonschema
import yaml


def documents(paths):
    found = []
    for path in paths:
        with open(path, encoding="utf-8") as file:
            found.extend(document for document in yaml.safe_load_all(file) if document is not None)
    return found


def check_compose(path, schema_path):
    with open(schema_path, encoding="utf-8") as file:
        schema = json.load(file)
    (compose,) = documents([path])
    # The schema declares draft 2019-09 under a URI jsonschema does not know
    # (http, with a trailing #), so the draft is named here.
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda error: list(error.absolute_path))
    for error in errors:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        print(f"{path}: {where}: {error.message}")
    if errors:
        return 1
    print(f"{path}: valid against {schema_path}")
    return 0


def main():
    command, arguments = sys.argv[1], sys.argv[2:]
    if command == "json":
        json.dump(documents(arguments), sys.stdout)
        return 0
    if command == "check-compose" and len(arguments) == 2:
        return check_compose(*arguments)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

//! The forwards file (`porthole forward -f forwards.yaml`): its schema and its checks.
//!
//! ```yaml
//! forwards:
//!   - name: web                 # optional; default NAMESPACE/TARGET or TARGET
//!     context: kind-dev         # optional kubeconfig context (default: the current one)
//!     namespace: shop           # optional (default: -n, else the context's namespace)
//!     target: deploy/web        # TYPE/NAME, as `porthole port-forward` takes it
//!     ports: ["8080:80", ":5432"]
//!     address: 127.0.0.1       # optional, a string or a list, like --address
//!     reverse: ["9000:localhost:5432"]   # optional POD_PORT:LOCAL_HOST:LOCAL_PORT
//! ```
//!
//! Strict: an unknown key anywhere, a missing `target` or `ports`, a bad target, port or address
//! is an error naming the file, the entry (index and name) and the field, before anything
//! connects. `ports` and `reverse` strings go to the forwarding engine unchanged, so whatever
//! `porthole port-forward` accepts (a `/udp` suffix, `--reverse`) works here too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ports::PortSpec;
use crate::target::TargetRef;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    forwards: Vec<serde_yaml::Value>,
}

/// `address:` as one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// One entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Option<String>,
    context: Option<String>,
    namespace: Option<String>,
    target: String,
    #[serde(default)]
    ports: Vec<String>,
    address: Option<OneOrMany>,
    #[serde(default)]
    reverse: Vec<String>,
}

/// One forward of a set, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Unique within the set; shown in every view and event.
    pub name: String,
    /// kubeconfig context, `None` for the current one.
    pub context: Option<String>,
    /// Namespace, `None` for `-n` or the context's default.
    pub namespace: Option<String>,
    /// `TYPE/NAME`.
    pub target: String,
    /// `[LOCAL:]REMOTE` strings, as `porthole port-forward` takes them.
    pub ports: Vec<String>,
    /// `--address` values (empty: the default, localhost).
    pub address: Vec<String>,
    /// `--reverse` values.
    pub reverse: Vec<String>,
}

/// A forwards file that cannot be used. kubectl's `error: ` prefix is added where it is
/// printed ([`crate::output::error_line`]).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read; the I/O error is the source, so print the chain.
    #[error("cannot read the forwards file {}", path.display())]
    Read {
        /// The file given with `-f`.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is wrong; the text names the file, the entry and the field.
    #[error("{0}")]
    Invalid(String),
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<Vec<Entry>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Checks the text of a forwards file (`path` is for messages).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, FileError> {
    let file = path.display();
    let doc: FileDoc = serde_yaml::from_str(text).map_err(|e| {
        FileError::Invalid(format!(
            "{file}: {e} (the file is a map with one key, `forwards:`, a list of entries; see \
             'porthole forward -h')"
        ))
    })?;
    if doc.forwards.is_empty() {
        return Err(FileError::Invalid(format!(
            "{file}: `forwards` is empty; add at least one entry with `target` and `ports`"
        )));
    }
    let mut entries = Vec::new();
    let mut names = HashSet::new();
    for (i, value) in doc.forwards.into_iter().enumerate() {
        // The name, if there is one, makes messages about a bad entry easier to place.
        let written_name = value
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let at = match &written_name {
            Some(n) => format!("{file}: forwards[{i}] (name {n:?})"),
            None => format!("{file}: forwards[{i}]"),
        };
        let raw: RawEntry = serde_yaml::from_value(value).map_err(|e| {
            FileError::Invalid(format!(
                "{at}: {e}; an entry has the fields name, context, namespace, target, ports, \
                 address, reverse"
            ))
        })?;
        let field =
            |name: &str, msg: String| FileError::Invalid(format!("{at}: field `{name}`: {msg}"));
        TargetRef::parse(&raw.target).map_err(|e| {
            field(
                "target",
                format!("{e} (want TYPE/NAME such as pod/web, svc/db, deploy/api)"),
            )
        })?;
        if raw.ports.is_empty() && raw.reverse.is_empty() {
            return Err(field(
                "ports",
                "no ports; give at least one [LOCAL_PORT:]REMOTE_PORT such as \"8080:80\" (or a \
                 `reverse` list)"
                    .into(),
            ));
        }
        for p in &raw.ports {
            PortSpec::parse(p).map_err(|e| field("ports", format!("{p:?}: {e}")))?;
        }
        let address = match raw.address {
            None => Vec::new(),
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(a)) => a,
        };
        if !address.is_empty() {
            crate::listen::parse_addresses(&address).map_err(|e| field("address", e))?;
        }
        for r in &raw.reverse {
            crate::reverse::ReverseSpec::parse(r).map_err(|e| field("reverse", e))?;
        }
        let name = raw.name.clone().unwrap_or_else(|| match &raw.namespace {
            Some(ns) => format!("{ns}/{}", raw.target),
            None => raw.target.clone(),
        });
        if name.is_empty() {
            return Err(field("name", "empty; leave it out or give a name".into()));
        }
        if !names.insert(name.clone()) {
            return Err(field(
                "name",
                format!("{name:?} is used by an earlier entry; names must be unique"),
            ));
        }
        entries.push(Entry {
            name,
            context: raw.context,
            namespace: raw.namespace,
            target: raw.target,
            ports: raw.ports,
            address,
            reverse: raw.reverse,
        });
    }
    Ok(entries)
}

/// Where `-f` files are read from: each file's entries in order, names unique across files.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Entry>, FileError> {
    let mut all: Vec<Entry> = Vec::new();
    for path in paths {
        for e in load(path)? {
            if all.iter().any(|o| o.name == e.name) {
                return Err(FileError::Invalid(format!(
                    "{}: entry name {:?} is also used in an earlier file; names must be unique",
                    path.display(),
                    e.name
                )));
            }
            all.push(e);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<Entry> {
        parse(Path::new("f.yaml"), text).unwrap()
    }

    fn parse_err(text: &str) -> String {
        crate::output::error_line(parse(Path::new("f.yaml"), text).unwrap_err())
    }

    #[test]
    fn entries_and_defaults() {
        let e = parse_ok(
            "forwards:\n\
             - target: pod/web\n  ports: ['8080:8000']\n\
             - name: db\n  namespace: shop\n  context: c1\n  target: svc/db\n  ports: [':5432', '6000:http']\n  address: 127.0.0.1\n\
             - namespace: shop\n  target: deploy/api\n  ports: ['9000']\n  address: [127.0.0.1, '::1']\n  reverse: ['9000:localhost:5432']\n",
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].name, "pod/web");
        assert_eq!(e[0].address, Vec::<String>::new());
        assert_eq!(e[1].name, "db");
        assert_eq!(e[1].context.as_deref(), Some("c1"));
        assert_eq!(e[1].ports, vec![":5432", "6000:http"]);
        assert_eq!(e[1].address, vec!["127.0.0.1"]);
        assert_eq!(e[2].name, "shop/deploy/api");
        assert_eq!(e[2].address, vec!["127.0.0.1", "::1"]);
        assert_eq!(e[2].reverse, vec!["9000:localhost:5432"]);
    }

    #[test]
    fn errors_name_file_entry_and_field() {
        let e =
            parse_err("forwards:\n- name: web\n  target: pod/web\n  ports: ['80']\n  tagret: x\n");
        assert!(
            e.starts_with("error: f.yaml: forwards[0] (name \"web\"): unknown field `tagret`"),
            "{e}"
        );
        let e = parse_err(
            "forwards:\n- target: pod/web\n  ports: ['80']\n- name: db\n  ports: ['80']\n",
        );
        assert!(
            e.starts_with("error: f.yaml: forwards[1] (name \"db\"): missing field `target`"),
            "{e}"
        );
        let e = parse_err("forwards:\n- name: web\n  target: pod/web\n  ports: ['80', '1:2:3']\n");
        assert_eq!(e, "error: f.yaml: forwards[0] (name \"web\"): field `ports`: \"1:2:3\": invalid port format '1:2:3'");
        let e = parse_err("forwards:\n- target: pod/web\n  ports: []\n");
        assert!(e.contains("forwards[0]: field `ports`: no ports"), "{e}");
        let e = parse_err("forwards:\n- target: a/b/c\n  ports: ['80']\n");
        assert!(e.contains("forwards[0]: field `target`: arguments in resource/name form may not have more than one slash"), "{e}");
        let e = parse_err("forwards:\n- target: web\n  ports: ['80']\n  address: nope\n");
        assert!(e.contains("field `address`: nope is not a valid IP"), "{e}");
        let e = parse_err("forwards:\n- target: web\n  ports: ['80']\n  reverse: ['9:5']\n");
        assert!(
            e.contains(
                "field `reverse`: invalid --reverse '9:5': expected POD_PORT:LOCAL_HOST:LOCAL_PORT"
            ),
            "{e}"
        );
        // An entry may be reverse only, like `porthole port-forward web --reverse ...`.
        let e = parse_ok("forwards:\n- target: web\n  ports: []\n  reverse: ['9000:[::1]:5432']\n");
        assert_eq!(e[0].reverse, vec!["9000:[::1]:5432"]);
        let e = parse_err(
            "forwards:\n- target: web\n  ports: ['80']\n- target: web\n  ports: ['81']\n",
        );
        assert!(
            e.contains("forwards[1]: field `name`: \"web\" is used by an earlier entry"),
            "{e}"
        );
        let e = parse_err("forward:\n- target: web\n");
        assert!(
            e.starts_with("error: f.yaml: unknown field `forward`"),
            "{e}"
        );
        let e = parse_err("forwards: []\n");
        assert!(e.contains("`forwards` is empty"), "{e}");
    }

    #[test]
    fn an_unreadable_file_keeps_the_io_error() {
        let e = load(Path::new("/nonexistent/forwards.yaml")).unwrap_err();
        let FileError::Read { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(
            porthole_relay::error::chain(&e)
                .starts_with("cannot read the forwards file /nonexistent/forwards.yaml: "),
            "{e}"
        );
    }
}

/// The fuzz entry point for forwards files (`fuzz/fuzz_targets/forward_set_file.rs`), also
/// called by the unit tests on odd inputs. Beyond not panicking: a file that is accepted has
/// unique, non-empty names and entries whose every target, port, reverse spec and address
/// parses on its own, and writing the entries back as a file and reading that gives the same
/// entries; a refused file's message names the file.
pub mod fuzz_logic {
    use std::path::Path;

    use super::{parse, Entry};

    /// Checks one input (any bytes; non-UTF-8 is refused as a file would be).
    pub fn forwards_file(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let path = Path::new("fuzz.yaml");
        let entries = match parse(path, text) {
            Ok(entries) => entries,
            Err(e) => {
                assert!(
                    e.to_string().starts_with("fuzz.yaml"),
                    "message names the file: {e}"
                );
                return;
            }
        };
        assert!(!entries.is_empty(), "an accepted file has entries");
        let mut names = std::collections::HashSet::new();
        for e in &entries {
            assert!(!e.name.is_empty());
            assert!(names.insert(e.name.clone()), "duplicate name {:?}", e.name);
            assert!(crate::target::TargetRef::parse(&e.target).is_ok());
            assert!(!e.ports.is_empty() || !e.reverse.is_empty());
            for p in &e.ports {
                assert!(crate::ports::PortSpec::parse(p).is_ok(), "{p:?}");
            }
            for r in &e.reverse {
                assert!(crate::reverse::ReverseSpec::parse(r).is_ok(), "{r:?}");
            }
            if !e.address.is_empty() {
                assert!(crate::listen::parse_addresses(&e.address).is_ok());
            }
        }
        let again = parse(path, &write(&entries)).expect("a file written from accepted entries");
        assert_eq!(again, entries, "entries survive being written back");
    }

    /// The entries as a forwards file, every field spelled out.
    fn write(entries: &[Entry]) -> String {
        let list: Vec<serde_yaml::Value> = entries
            .iter()
            .map(|e| {
                let mut m = serde_yaml::Mapping::new();
                let mut put = |k: &str, v: serde_yaml::Value| {
                    m.insert(k.into(), v);
                };
                put("name", e.name.clone().into());
                if let Some(c) = &e.context {
                    put("context", c.clone().into());
                }
                if let Some(n) = &e.namespace {
                    put("namespace", n.clone().into());
                }
                put("target", e.target.clone().into());
                put("ports", strings(&e.ports));
                if !e.address.is_empty() {
                    put("address", strings(&e.address));
                }
                put("reverse", strings(&e.reverse));
                serde_yaml::Value::Mapping(m)
            })
            .collect();
        let mut doc = serde_yaml::Mapping::new();
        doc.insert("forwards".into(), serde_yaml::Value::Sequence(list));
        serde_yaml::to_string(&doc).expect("a mapping of strings serialises")
    }

    fn strings(v: &[String]) -> serde_yaml::Value {
        serde_yaml::Value::Sequence(v.iter().cloned().map(Into::into).collect())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn odd_files() {
            for text in [
                "",
                "forwards: []",
                "forwards:\n- target: pod/web\n  ports: ['8080:80', ':53/udp']\n",
                "forwards:\n- {name: 'a: b', target: web, ports: ['1'], address: ['::1', localhost]}\n",
                "forwards:\n- target: web\n  reverse: ['9000:[::1]:5432']\n",
                "forwards:\n- target: web\n  ports: ['80']\n  namespace: ''\n",
                "forwards:\n- target: web\n  ports: [80]\n",
                "forwards:\n- target: web\n  ports: ['80']\n  name: 'yes'\n- target: web\n  ports: ['81']\n  name: 'true'\n",
                "\u{feff}forwards:\n- target: web\n  ports: ['80']\n",
            ] {
                super::forwards_file(text.as_bytes());
            }
            super::forwards_file(&[0xff, 0xfe]);
        }
    }
}

//! Label and field selectors as list and watch requests carry them (`a=b,c!=d,e,!f`, and
//! `metadata.name=x` / `metadata.namespace=y` for fields).

use serde_json::Value;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses the equality-based syntax; set-based terms (`in (...)`) are refused with `Err`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let requirement = if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if term.contains(' ') || term.contains('(') {
                return Err(format!("unsupported selector term {term:?}"));
            } else {
                Requirement::Exists(term.into())
            };
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    /// Matches the object's labels.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let label = |k: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        self.matches(label)
    }

    /// Matches `metadata.name` / `metadata.namespace` fields.
    pub fn matches_fields(&self, object: &Value) -> bool {
        let field = |k: &str| match k {
            "metadata.name" => object.pointer("/metadata/name").and_then(Value::as_str),
            "metadata.namespace" => object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str),
            _ => None,
        };
        self.matches(field)
    }

    fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => lookup(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => lookup(k) != Some(v.as_str()),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_terms() {
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "edge"}}});
        let yes = |s: &str| Selector::parse(s).unwrap().matches_labels(&obj);
        assert!(yes(""));
        assert!(yes("app=web,tier==edge"));
        assert!(yes("app!=db,tier,!missing"));
        assert!(!yes("app=db"));
        assert!(!yes("!app"));
        assert!(Selector::parse("app in (web)").is_err());
    }

    #[test]
    fn field_terms() {
        let obj = json!({"metadata": {"name": "a", "namespace": "web"}});
        let sel = Selector::parse("metadata.name=a,metadata.namespace=web").unwrap();
        assert!(sel.matches_fields(&obj));
        assert!(
            !Selector::parse("metadata.name=b")
                .unwrap()
                .matches_fields(&obj)
        );
    }
}

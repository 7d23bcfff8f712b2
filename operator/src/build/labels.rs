//! Labels on every child, and the selectors built from them.

use std::collections::BTreeMap;

use bitscale_api::v1alpha1::Variant;

use bitscale_api::telemetry::{ENGINE_APP, LABEL_APP_NAME};
pub use bitscale_api::telemetry::{LABEL_INSTANCE, LABEL_VARIANT};
/// The operator's field manager for server-side apply.
pub const FIELD_MANAGER: &str = "bitscale.dev/operator";

/// The label value of a variant: `<level>.<hardwareClass>`, shortened with a hash when it would
/// exceed the 63 characters a label value may have.
pub fn variant_label(variant: &Variant) -> String {
    let full = format!("{}.{}", variant.level, variant.hardware_class);
    shorten(&full, 63, '.')
}

/// Shortens `value` to `max` characters by cutting it and appending a hash of the whole, so
/// distinct long values stay distinct.
pub fn shorten(value: &str, max: usize, separator: char) -> String {
    if value.len() <= max {
        return value.to_owned();
    }
    let hash = format!("{:08x}", fnv1a(value) as u32);
    let keep = max - hash.len() - 1;
    let head = value[..keep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}{separator}{hash}")
}

pub(crate) fn fnv1a(value: &str) -> u64 {
    value.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The standard instance label.
pub const LABEL_APP_INSTANCE: &str = "app.kubernetes.io/instance";
/// The standard managed-by label; the operator watches its children by it.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`LABEL_MANAGED_BY`] on every child.
pub const MANAGED_BY: &str = "bitscale-operator";

/// Every label key the operator sets on a child: whether a child is as the operator applied it
/// is decided on these alone (`controller::children::fingerprint`).
pub const OWN_LABELS: [&str; 5] = [
    LABEL_APP_NAME,
    LABEL_APP_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_INSTANCE,
    LABEL_VARIANT,
];

/// Labels every child of the InferenceService `name` carries.
pub fn common_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP_NAME.to_owned(), ENGINE_APP.to_owned()),
        (LABEL_APP_INSTANCE.to_owned(), shorten(name, 63, '-')),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_INSTANCE.to_owned(), shorten(name, 63, '-')),
    ])
}

/// Selects every engine pod of the InferenceService `name`.
pub fn instance_selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_INSTANCE.to_owned(), shorten(name, 63, '-'))])
}

/// Selects the engine pods of one variant.
pub fn variant_selector(name: &str, variant_label: &str) -> BTreeMap<String, String> {
    let mut selector = instance_selector(name);
    selector.insert(LABEL_VARIANT.to_owned(), variant_label.to_owned());
    selector
}

/// Renders a selector as a label-selector string (`a=b,c=d`).
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use bitscale_api::v1alpha1::QuantLevel;

    use super::*;

    #[test]
    fn variant_labels_are_valid_label_values() {
        let short = Variant {
            level: QuantLevel::Q4K,
            hardware_class: "cpu-standard".into(),
        };
        assert_eq!(variant_label(&short), "q4_k.cpu-standard");
        let long = Variant {
            level: QuantLevel::Q4K,
            hardware_class: "x".repeat(100),
        };
        let other = Variant {
            level: QuantLevel::Q4K,
            hardware_class: format!("{}y", "x".repeat(99)),
        };
        assert_eq!(variant_label(&long).len(), 63);
        assert_ne!(variant_label(&long), variant_label(&other));
    }

    #[test]
    fn every_label_on_a_child_is_one_the_fingerprint_reads() {
        let children = crate::build::fixtures::desired_q8_0();
        let metas = [
            &children.deployment.metadata,
            &children.service.metadata,
            &children.pdb.metadata,
        ];
        for key in metas
            .iter()
            .flat_map(|m| m.labels.iter().flatten().map(|(k, _)| k))
        {
            assert!(OWN_LABELS.contains(&key.as_str()), "{key} is not in OWN_LABELS");
        }
    }
}

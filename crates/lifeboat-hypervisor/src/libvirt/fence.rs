//! A fenced libvirt domain cannot be started by anyone — `virsh start`, virt-manager,
//! Cockpit or autostart — without a libvirt hook (which libvirtd reads only when it
//! starts): its definition gets one QEMU argument that QEMU refuses, so every start fails
//! with QEMU naming it: `-lifeboat-fenced-failed-over-see-lifeboat-vms-list: invalid
//! option`. Unfencing removes exactly that argument and nothing else an administrator
//! may have changed since.

/// libvirt's namespace for QEMU pass-through arguments.
pub(crate) const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// The argument QEMU refuses; it says what happened and where to look.
pub const FENCE_ARG: &str = "-lifeboat-fenced-failed-over-see-lifeboat-vms-list";

/// Whether the domain's XML carries the fence.
pub fn is_fenced(xml: &str) -> bool {
    fence_arg_range(xml).is_some()
}

/// The XML with the fence added (unchanged if it is there). The domain XML libvirt gives
/// is well-formed with `</domain>` last, so the argument goes just before it.
pub fn add_fence(xml: &str) -> Result<String, String> {
    if is_fenced(xml) {
        return Ok(xml.to_string());
    }
    roxmltree::Document::parse(xml).map_err(|e| format!("the domain XML does not parse: {e}"))?;
    let end = xml
        .rfind("</domain>")
        .ok_or_else(|| "the domain XML has no </domain>".to_string())?;
    Ok(format!(
        "{}<qemu:commandline xmlns:qemu='{QEMU_NS}'><qemu:arg value='{FENCE_ARG}'/></qemu:commandline>{}",
        &xml[..end],
        &xml[end..]
    ))
}

/// The XML without the fence: our argument removed, and its `<qemu:commandline>` too
/// when it held nothing else. `None` when there was no fence.
pub fn remove_fence(xml: &str) -> Option<String> {
    let range = fence_arg_range(xml)?;
    let mut out = xml.to_string();
    out.replace_range(range, "");
    Some(out)
}

/// The byte range to cut: the `<qemu:arg>` carrying the fence, or its whole
/// `<qemu:commandline>` when that holds no other element.
fn fence_arg_range(xml: &str) -> Option<std::ops::Range<usize>> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let arg = doc.descendants().find(|n| {
        n.tag_name().namespace() == Some(QEMU_NS)
            && n.tag_name().name() == "arg"
            && n.attribute("value") == Some(FENCE_ARG)
    })?;
    let parent = arg.parent_element()?;
    let alone = parent.children().filter(|c| c.is_element()).count() == 1;
    Some(if alone { parent.range() } else { arg.range() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "<domain type='kvm'><name>web1</name><memory>1</memory>\
                          <devices/></domain>";

    #[test]
    fn the_fence_goes_on_and_comes_off_exactly() {
        assert!(!is_fenced(DOMAIN));
        let fenced = add_fence(DOMAIN).unwrap();
        assert!(is_fenced(&fenced), "{fenced}");
        assert_eq!(add_fence(&fenced).unwrap(), fenced, "idempotent");
        assert_eq!(remove_fence(&fenced).unwrap(), DOMAIN);
        assert_eq!(remove_fence(DOMAIN), None);
    }

    #[test]
    fn other_qemu_arguments_of_the_administrator_stay() {
        // As libvirt writes it back: the namespace on the root, the fence among others.
        let xml = format!(
            "<domain type='kvm' xmlns:qemu='{QEMU_NS}'><name>w</name><memory>1</memory>\
             <qemu:commandline><qemu:arg value='-s'/><qemu:arg value='{FENCE_ARG}'/>\
             </qemu:commandline></domain>"
        );
        assert!(is_fenced(&xml));
        let back = remove_fence(&xml).unwrap();
        assert!(!is_fenced(&back));
        assert!(back.contains("<qemu:arg value='-s'/>"), "{back}");
        roxmltree::Document::parse(&back).unwrap();
        // An argument with the same text outside libvirt's QEMU namespace is not ours.
        let other = format!(
            "<domain><name>w</name><memory>1</memory><x:arg xmlns:x='urn:x' value='{FENCE_ARG}'/></domain>"
        );
        assert!(!is_fenced(&other));
        assert!(add_fence("<domain><name>").is_err());
    }
}

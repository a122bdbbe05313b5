//! The skills extension (`io.modelcontextprotocol/skills`, SEP-2640): skills
//! served as `skill://` resources, enumerated by `skills/list` and
//! `skills/get`, browsed with `resources/directory/read`.
//!
//! A skill is a directory of files whose `SKILL.md` starts with YAML
//! frontmatter (`name`, `description`). Its entry names the `SKILL.md` URI,
//! carries the frontmatter, and lists every file once with its SHA-256
//! digest and size, so a client can cache files and fetch only what
//! changed. Everything is computed once when the registry is built; the
//! methods only copy prepared JSON. Limits from the SEP are enforced at
//! registration: at most 512 files and 16 MiB per skill.

use sha2::{Digest, Sha256};
use simd_json::prelude::*;

use super::ctx::CallCtx;
use super::encode::{uri_data, JsonResult};
use super::registry::{JsonReply, RegistryError, Resource, ResourceDescriptor};
use super::tools::RpcError;
use crate::protocol::json;

pub const EXTENSION: &str = "io.modelcontextprotocol/skills";
/// What `capabilities.extensions[EXTENSION]` says: directories can be read.
pub const SETTINGS_JSON: &str = r#"{"directoryRead":true}"#;
pub const DIRECTORY_MIME: &str = "inode/directory";
pub const MANIFEST: &str = "SKILL.md";
/// SEP-2640 bounds on one skill.
pub const MAX_FILES_PER_SKILL: usize = 512;
pub const MAX_SKILL_BYTES: usize = 16 * 1024 * 1024;

/// One file of a skill.
#[derive(Debug, Clone)]
pub struct SkillFile {
    /// Path inside the skill, `/`-separated (`scripts/run.sh`).
    pub path: String,
    pub mime_type: String,
    pub text: String,
}

/// A skill as registered: its path under `skill://` and its files. The
/// `SKILL.md` file is made from `name`, `description` and `body`.
#[derive(Debug, Clone)]
pub struct SkillSpec {
    /// `skill://{path}/SKILL.md`; the last segment must be the name.
    pub path: String,
    pub name: String,
    pub description: String,
    pub body: String,
    pub files: Vec<SkillFile>,
}

impl SkillSpec {
    pub fn new(path: &str, name: &str, description: &str, body: &str) -> Self {
        Self {
            path: path.trim_matches('/').to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            body: body.to_owned(),
            files: Vec::new(),
        }
    }

    pub fn file(mut self, path: &str, mime_type: &str, text: &str) -> Self {
        self.files.push(SkillFile {
            path: path.trim_matches('/').to_owned(),
            mime_type: mime_type.to_owned(),
            text: text.to_owned(),
        });
        self
    }

    fn manifest_text(&self) -> String {
        format!(
            "---\nname: {}\ndescription: {}\n---\n\n{}",
            self.name, self.description, self.body
        )
    }

    /// Every file with its URI, the manifest first.
    fn all_files(&self) -> Vec<SkillFile> {
        let mut files = vec![SkillFile {
            path: MANIFEST.to_owned(),
            mime_type: "text/markdown".to_owned(),
            text: self.manifest_text(),
        }];
        files.extend(self.files.iter().cloned());
        files
    }

    fn uri(&self, rel: &str) -> String {
        format!("skill://{}/{rel}", self.path)
    }
}

/// A directory's child: (uri, name, mime type).
pub type DirChild = (String, String, String);

/// A registered skill with its prepared entry.
pub struct Skill {
    pub manifest_uri: String,
    /// `skill://{path}`: the skill's directory.
    pub root_uri: String,
    /// The skill entry object (`{uri, frontmatter, resources}`) as JSON.
    pub entry_json: String,
    /// Every directory of the skill (its root too) and its direct children
    /// as (uri, name, mime type), in name order.
    dirs: Vec<(String, Vec<DirChild>)>,
}

impl Skill {
    /// Checks `spec` against the SEP's rules and prepares its entry.
    pub fn build(spec: &SkillSpec) -> Result<(Skill, Vec<FileResource>), RegistryError> {
        let bad = |message: String| RegistryError::Skill {
            skill: spec.name.clone(),
            message,
        };
        let last = spec.path.rsplit('/').next().unwrap_or("");
        if spec.path.is_empty() || last != spec.name {
            return Err(bad(format!(
                "the last segment of its path {:?} must equal its name",
                spec.path
            )));
        }
        if spec.name.is_empty() || spec.description.is_empty() || spec.description.contains('\n') {
            return Err(bad("needs a name and a one-line description".into()));
        }
        let files = spec.all_files();
        if files.len() > MAX_FILES_PER_SKILL {
            return Err(bad(format!("more than {MAX_FILES_PER_SKILL} files")));
        }
        let total: usize = files.iter().map(|f| f.text.len()).sum();
        if total > MAX_SKILL_BYTES {
            return Err(bad(format!("more than {MAX_SKILL_BYTES} bytes")));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &files {
            if f.path.is_empty()
                || f.path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(bad(format!("bad file path {:?}", f.path)));
            }
            if !seen.insert(f.path.clone()) {
                return Err(bad(format!("file {:?} listed twice", f.path)));
            }
        }

        let manifest_uri = spec.uri(MANIFEST);
        let mut entry = Vec::with_capacity(512);
        entry.extend_from_slice(b"{\"uri\":");
        json::write_str(&mut entry, &manifest_uri);
        entry.extend_from_slice(b",\"frontmatter\":{\"name\":");
        json::write_str(&mut entry, &spec.name);
        entry.extend_from_slice(b",\"description\":");
        json::write_str(&mut entry, &spec.description);
        entry.extend_from_slice(b"},\"resources\":[");
        let mut resources = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            if i > 0 {
                entry.push(b',');
            }
            // The manifest's entry carries the skill's own uri.
            let uri = spec.uri(&f.path);
            entry.extend_from_slice(b"{\"uri\":");
            json::write_str(&mut entry, &uri);
            entry.extend_from_slice(b",\"digest\":\"sha256:");
            for b in Sha256::digest(f.text.as_bytes()) {
                entry.extend_from_slice(format!("{b:02x}").as_bytes());
            }
            entry.extend_from_slice(b"\",\"size\":");
            json::write_u64(&mut entry, f.text.len() as u64);
            entry.push(b'}');
            let is_manifest = f.path == MANIFEST;
            resources.push(FileResource {
                desc: ResourceDescriptor {
                    uri,
                    name: if is_manifest {
                        spec.name.clone()
                    } else {
                        format!("{}/{}", spec.name, f.path)
                    },
                    description: is_manifest.then(|| spec.description.clone()),
                    mime_type: Some(f.mime_type.clone()),
                    size: Some(f.text.len() as u64),
                    ..Default::default()
                },
                text: f.text.clone(),
            });
        }
        entry.extend_from_slice(b"]}");

        // Directories: the root and every prefix of a file path.
        let root_uri = format!("skill://{}", spec.path);
        let mut dirs: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, (String, String)>,
        > = std::collections::BTreeMap::new();
        dirs.entry(String::new()).or_default();
        for f in &files {
            let parts: Vec<&str> = f.path.split('/').collect();
            for depth in 0..parts.len() {
                let parent = parts[..depth].join("/");
                let child = parts[..=depth].join("/");
                let is_file = depth == parts.len() - 1;
                let mime = if is_file {
                    f.mime_type.clone()
                } else {
                    DIRECTORY_MIME.to_owned()
                };
                dirs.entry(parent)
                    .or_default()
                    .insert(child.clone(), (parts[depth].to_owned(), mime));
                if !is_file {
                    dirs.entry(child).or_default();
                }
            }
        }
        let dirs = dirs
            .into_iter()
            .map(|(dir, children)| {
                let uri = if dir.is_empty() {
                    root_uri.clone()
                } else {
                    spec.uri(&dir)
                };
                let kids = children
                    .into_iter()
                    .map(|(path, (name, mime))| (spec.uri(&path), name, mime))
                    .collect();
                (uri, kids)
            })
            .collect();
        let skill = Skill {
            manifest_uri,
            root_uri,
            entry_json: String::from_utf8(entry).expect("JSON is UTF-8"),
            dirs,
        };
        Ok((skill, resources))
    }

    /// The direct children of directory `uri`, if it is one of this skill's.
    pub fn directory(&self, uri: &str) -> Option<&[DirChild]> {
        let uri = uri.trim_end_matches('/');
        self.dirs
            .iter()
            .find(|(d, _)| d == uri)
            .map(|(_, kids)| kids.as_slice())
    }
}

/// A skill file served through `resources/read`.
pub struct FileResource {
    desc: ResourceDescriptor,
    text: String,
}

impl Resource for FileResource {
    fn descriptor(&self) -> &ResourceDescriptor {
        &self.desc
    }

    fn read(&self, _cx: &CallCtx<'_>, uri: &str) -> JsonReply {
        let mime = self.desc.mime_type.as_deref().unwrap_or("text/plain");
        JsonReply::Ready(Ok(super::content::text_contents(uri, mime, &self.text)))
    }
}

/// `skills/get`: the entry for `params.uri` (the `SKILL.md` URI or the
/// skill's directory), as `{"skill": entry}`.
pub(crate) fn get(
    skills: &[Skill],
    params: &Option<simd_json::tape::Value<'_, '_>>,
) -> Result<JsonResult, RpcError> {
    let uri = params
        .as_ref()
        .and_then(|p| p.get("uri"))
        .and_then(|u| u.into_string())
        .ok_or_else(|| RpcError::invalid_params("skills/get needs params.uri (a string)"))?;
    let skill = skills
        .iter()
        .find(|s| s.manifest_uri == uri || s.root_uri == uri.trim_end_matches('/'))
        .ok_or_else(|| not_found(uri))?;
    Ok(JsonResult::new(format!("\"skill\":{}", skill.entry_json)))
}

fn not_found(uri: &str) -> RpcError {
    RpcError::invalid_params(format!("Unknown skill: {uri}")).with_data(uri_data(uri))
}

/// The children of directory `uri` among the served skills; -32602 when it
/// is not a directory this server serves.
pub(crate) fn directory<'a>(
    skills: &'a [Skill],
    uri: &str,
) -> Result<&'a [(String, String, String)], RpcError> {
    skills.iter().find_map(|s| s.directory(uri)).ok_or_else(|| {
        RpcError::invalid_params(format!("not a directory: {uri}")).with_data(uri_data(uri))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_list_every_file_with_digest_and_size() {
        let spec = SkillSpec::new(
            "demo/pdf-tools",
            "pdf-tools",
            "Work with PDFs",
            "# PDF tools\n",
        )
        .file("scripts/split.sh", "text/x-shellscript", "echo split\n");
        let (skill, files) = Skill::build(&spec).unwrap();
        assert_eq!(skill.manifest_uri, "skill://demo/pdf-tools/SKILL.md");
        let v: serde_json::Value = serde_json::from_str(&skill.entry_json).unwrap();
        assert_eq!(v["frontmatter"]["name"], "pdf-tools");
        assert_eq!(v["resources"][0]["uri"], "skill://demo/pdf-tools/SKILL.md");
        assert_eq!(v["resources"][1]["size"], 11);
        assert_eq!(
            v["resources"][1]["digest"],
            "sha256:5ff21bf4cadfbb1a01019564c393f0c70b295593198af719f2471988cc03a4ce"
        );
        assert!(v["resources"][1]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
        assert_eq!(v["resources"][1]["digest"].as_str().unwrap().len(), 7 + 64);
        assert_eq!(files.len(), 2);
        let root = skill.directory("skill://demo/pdf-tools").unwrap();
        assert_eq!(root.len(), 2);
        assert!(root
            .iter()
            .any(|(u, _, m)| u == "skill://demo/pdf-tools/scripts" && m == DIRECTORY_MIME));
        assert!(skill.directory("skill://demo/pdf-tools/SKILL.md").is_none());
        assert!(Skill::build(&SkillSpec::new("demo/x", "y", "d", "")).is_err());
    }
}

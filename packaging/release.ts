/**
 * npm run release (bun packaging/release.ts [--out DIR]): the release files,
 * in dist/release/ unless --out says otherwise; what was there goes first.
 *
 *   exota-milter-VERSION-linux-x64       x86-64 (Bun's baseline build: no AVX2 needed)
 *   exota-milter-VERSION-linux-arm64     arm64
 *   exota-milter_DEBVERSION_amd64.deb    the Debian packages (dpkg-deb), DEBVERSION = VERSION-1
 *   exota-milter_DEBVERSION_arm64.deb
 *   SHA256SUMS                           over the four, for sha256sum -c
 *
 * The executables of other machines' targets need their Bun runtime, which
 * Bun takes from the npm registry (or its cache) on the first build.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import { gzipSync } from "node:zlib";
import { buildExecutable, commit, DATE, MAN_PAGE, VERSION } from "../build.ts";

const TOP = join(import.meta.dir, "..");
const HERE = import.meta.dir;

/** Bun's target and Debian's name of each architecture. */
export const ARCHES = [
  { name: "x64", target: "bun-linux-x64-baseline", deb: "amd64" },
  { name: "arm64", target: "bun-linux-arm64", deb: "arm64" },
] as const;

/**
 * A Debian revision, so that this is a Debian (not a native) package: what
 * lintian expects of a package with changelog.Debian.gz.
 */
export const DEB_VERSION = `${VERSION}-1`;

const MAINTAINER = process.env.DEBEMAIL !== undefined
  ? `${process.env.DEBFULLNAME ?? "exota-milter maintainers"} <${process.env.DEBEMAIL}>`
  : "exota-milter maintainers <maintainers@users.noreply.r-seed-67455a56.example>";

const releaseName = (arch: typeof ARCHES[number]) => `exota-milter-${VERSION}-linux-${arch.name}`;
const debName = (arch: typeof ARCHES[number]) => `exota-milter_${DEB_VERSION}_${arch.deb}.deb`;

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { stdio: ["ignore", "inherit", "inherit"] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

/** Writes a file with the given mode, whatever the umask. */
function put(path: string, content: string | Uint8Array, mode: number): void {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, content);
  chmodSync(path, mode);
}

/** gzip -9n: no name, no time stamp (reproducible; lintian checks it). */
const gzip = (content: string | Uint8Array) => gzipSync(content, { level: 9 });

/**
 * The unit files with the package's paths: /usr/sbin, the man page. Fails
 * when a unit no longer has the line this rewrites.
 */
function debianUnit(name: string): string {
  let unit = readFileSync(join(HERE, "systemd", name), "utf8");
  for (const [from, to] of [
    ["/usr/local/bin/exota-milter", "/usr/sbin/exota-milter"],
    [" file:///usr/local/share/doc/exota-milter/README.md", ""],
  ] as const) {
    if (name.endsWith(".service") && !unit.includes(from)) throw new Error(`packaging/systemd/${name} has no ${from}`);
    unit = unit.replaceAll(from, to);
  }
  if (unit.includes("/usr/local")) throw new Error(`packaging/systemd/${name}: a /usr/local path is left for the package`);
  return unit;
}

function changelog(): string {
  // RFC 2822 date, as dpkg-parsechangelog wants it.
  const date = DATE.toUTCString().replace(/^(\w+), (\d+) (\w+) (\d+) ([\d:]+) GMT$/, "$1, $2 $3 $4 $5 +0000");
  return `exota-milter (${DEB_VERSION}) unstable; urgency=medium\n\n` +
    `  * Built from git commit ${commit || "unknown"}; the changes are in the git log.\n\n` +
    ` -- ${MAINTAINER}  ${date}\n`;
}

const DESCRIPTION = `Exchange Online tenant authorisation milter
 exota-milter is a mail filter (milter) for Postfix and Sendmail smarthosts
 that relay mail for Microsoft Exchange Online (Microsoft 365) tenants. Every
 tenant sends from the same Microsoft addresses with the same client
 certificate; exota-milter decides per message whether the sending tenant may
 use the From domain, from the client certificate, the DKIM results of an
 earlier milter such as OpenDKIM, the tenant id header and a per-domain policy
 (a JSON file or an LDAP directory).
 .
 Installing changes no mail path: enable exota-milter.socket and add the
 milter to Postfix's smtpd_milters once /etc/exota-milter/ is set up.`;

/** Every file under dir, relative, sorted. */
function files(dir: string, prefix = ""): string[] {
  return readdirSync(join(dir, prefix), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? files(dir, join(prefix, e.name)) : [join(prefix, e.name)]))
    .sort();
}

/** Builds one .deb from an executable, with dpkg-deb; returns its path. */
export function buildDeb(executable: string, arch: typeof ARCHES[number], outDir: string): string {
  const stage = join(outDir, `.stage-${arch.deb}`);
  rmSync(stage, { recursive: true, force: true });
  const doc = join(stage, "usr/share/doc/exota-milter");
  put(join(stage, "usr/sbin/exota-milter"), readFileSync(executable), 0o755);
  for (const unit of ["exota-milter.service", "exota-milter.socket"]) {
    put(join(stage, "lib/systemd/system", unit), debianUnit(unit), 0o644);
  }
  // Settings and policy: conffiles, never world-readable (postinst gives them the group exota-milter).
  put(join(stage, "etc/exota-milter/exota-milter.env"), readFileSync(join(HERE, "exota-milter.env")), 0o640);
  put(join(stage, "etc/exota-milter/policy.json"), readFileSync(join(TOP, "policy.example.json")), 0o640);
  put(join(stage, "usr/share/man/man8/exota-milter.8.gz"), gzip(MAN_PAGE), 0o644);
  put(join(doc, "README.md.gz"), gzip(readFileSync(join(TOP, "README.md"))), 0o644);
  for (const f of ["exota-milter.schema", "exota-milter.ldif", "sample-policies.ldif"]) {
    put(join(doc, f), readFileSync(join(TOP, "ldap", f)), 0o644);
  }
  put(join(doc, "copyright"), readFileSync(join(HERE, "debian/copyright")), 0o644);
  put(join(doc, "changelog.Debian.gz"), gzip(changelog()), 0o644);
  put(join(stage, "usr/share/lintian/overrides/exota-milter"), readFileSync(join(HERE, "debian/lintian-overrides")), 0o644);

  const payload = files(stage);
  const kib = payload.reduce((sum, f) => sum + Math.ceil(statSync(join(stage, f)).size / 1024), 0);
  const conffiles = readFileSync(join(HERE, "debian/conffiles"), "utf8");
  put(
    join(stage, "DEBIAN/control"),
    [
      "Package: exota-milter",
      `Version: ${DEB_VERSION}`,
      `Architecture: ${arch.deb}`,
      `Maintainer: ${MAINTAINER}`,
      `Installed-Size: ${kib}`,
      // The executable needs glibc 2.17 or newer and nothing else; postinst calls adduser.
      "Depends: adduser, libc6 (>= 2.17)",
      "Section: mail",
      "Priority: optional",
      `Description: ${DESCRIPTION}`,
      "",
    ].join("\n"),
    0o644,
  );
  put(join(stage, "DEBIAN/conffiles"), conffiles, 0o644);
  // dpkg checks conffiles by their own hashes: md5sums lists the rest.
  const md5sums = payload
    .filter((f) => !conffiles.split("\n").includes(`/${f}`))
    .map((f) => `${createHash("md5").update(readFileSync(join(stage, f))).digest("hex")}  ${f}\n`)
    .join("");
  put(join(stage, "DEBIAN/md5sums"), md5sums, 0o644);
  for (const script of ["postinst", "prerm", "postrm"]) {
    put(join(stage, "DEBIAN", script), readFileSync(join(HERE, "debian", script)), 0o755);
  }
  // Every directory 0755, whatever the umask made of it.
  for (const f of files(stage)) {
    for (let d = dirname(f); d !== "."; d = dirname(d)) chmodSync(join(stage, d), 0o755);
  }
  chmodSync(stage, 0o755);

  const deb = join(outDir, debName(arch));
  // gzip -6: 53 MB. -9 takes twice as long for 0.3% less, xz -6 twelve times as long for 24% less.
  run("dpkg-deb", ["--root-owner-group", "-Zgzip", "-z6", "--build", stage, deb]);
  rmSync(stage, { recursive: true, force: true });
  return deb;
}

/** SHA256SUMS in sha256sum's format. */
function sha256sums(paths: readonly string[]): string {
  return paths.map((p) => `${createHash("sha256").update(readFileSync(p)).digest("hex")}  ${basename(p)}\n`).join("");
}

if (import.meta.main) {
  const i = process.argv.indexOf("--out");
  const out = i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : join(TOP, "dist/release");
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const made: string[] = [];
  for (const arch of ARCHES) {
    const executable = join(out, releaseName(arch));
    await buildExecutable(arch.target, executable);
    made.push(executable);
  }
  for (const [n, arch] of ARCHES.entries()) made.push(buildDeb(made[n]!, arch, out));
  writeFileSync(join(out, "SHA256SUMS"), sha256sums(made));
  for (const p of [...made, join(out, "SHA256SUMS")]) console.log(`${relative(process.cwd(), p)}  ${statSync(p).size} bytes`);
}

//! Real clients against a deployment of two replicas sharing PostgreSQL and
//! SeaweedFS: skopeo pushes through a round-robin proxy, so consecutive
//! requests of one push (POST, PATCH, PUT) land on different replicas; then
//! skopeo and containerd pull from one replica directly.

use crate::deployment::ScaledOut;
use crate::interop::check_pulled;
use crate::interop::image::{Image, Layout, referenced_blobs};
use crate::interop::tools::{Containerd, Skopeo, require_root, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_through_alternating_replicas_and_skopeo_and_ctr_pull_from_one() {
    require_root("containerd and ctr");
    let deployment = ScaledOut::start(|_| {}).await;
    let (replicas, proxy) = (&deployment.replicas, &deployment.proxy);
    replicas.create_project("tool-replicas", true).await;
    let work = tempfile::tempdir().expect("temporary directory");
    let skopeo = Skopeo::find(work.path());
    // Layers over 5 MiB: S3 parts and tails cross replicas too.
    let image = Image::build(&work.path().join("in"), 7 << 20).await;
    let (desc, manifest) = image.manifest();

    run(skopeo.cmd([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &replicas.admin_creds(),
        &image.reference(),
        &format!("docker://{}/tool-replicas/app:v1", proxy.host),
    ]))
    .await;
    let hits = proxy.hits();
    assert!(
        hits.iter().all(|h| *h >= 5),
        "both replicas took part of the push: {hits:?}"
    );

    // Out of the second replica with skopeo, byte for byte.
    let b = replicas.servers[1].host();
    let out = Layout(work.path().join("out"));
    run(skopeo.cmd([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{b}/tool-replicas/app:v1"),
        &out.reference("v1"),
    ]))
    .await;
    let (out_desc, out_manifest) = out.manifest("v1");
    assert_eq!(out_desc.digest, desc.digest);
    assert!(out_manifest == manifest);
    for blob in referenced_blobs(&manifest) {
        assert!(
            out.blob(&blob.digest) == image.layout.blob(&blob.digest),
            "blob {} read back from the other replica differs",
            blob.digest
        );
    }

    // And with containerd, the kubelet's path, from the first replica.
    let a = replicas.servers[0].host();
    let daemon = Containerd::start().await;
    let reference = format!("{a}/tool-replicas/app:v1");
    run(daemon.ctr(["image", "pull", "--plain-http", &reference])).await;
    check_pulled(&daemon, &reference, &desc.digest).await;
    drop(daemon);
    deployment.stop().await;
}

import ij.IJ;
import ij.ImagePlus;
import ij.process.ImageProcessor;

/**
 * Opens one TIFF as an ImageJ 1.x virtual stack (pages read on demand, so files larger
 * than memory work) and prints "width height stack_size sum_of_last_slice".
 *
 *   java -Djava.awt.headless=true -cp /usr/share/java/ij.jar tests/ImageJVirtualProbe.java FILE
 */
public class ImageJVirtualProbe {
    public static void main(String[] args) {
        ImagePlus imp = IJ.openVirtual(args[0]);
        if (imp == null) {
            System.out.println("error: ImageJ could not open " + args[0]);
            System.exit(1);
        }
        int n = imp.getStackSize();
        ImageProcessor last = imp.getStack().getProcessor(n);
        long sum = 0;
        for (int i = 0; i < last.getPixelCount(); i++) {
            sum += (long) last.get(i);
        }
        System.out.println(imp.getWidth() + " " + imp.getHeight() + " " + n + " " + sum);
    }
}
